"""CentralFlow: its SDCP solver, its third derivatives, its field and its sharpness."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.flows._central import third_derivative_rows
from driftlab.flows._sdcp import natural_residual, smat, solve_sdcp, svec

from .helpers import tree_allclose


def _swish_mlp(seed=1, n=32, d=4, m=8):
    """A 4-8-8-1 swish MLP on random regression data (121 parameters): it sharpens fast."""
    keys = jax.random.split(jax.random.key(seed), 5)
    data = (jax.random.normal(keys[0], (n, d)), jax.random.normal(keys[1], (n,)))
    shapes = [(d, m), (m, m), (m, 1)]
    params = [
        {"W": jax.random.normal(key, shape) / jnp.sqrt(shape[0]), "b": jnp.zeros(shape[1])}
        for key, shape in zip(keys[2:], shapes)
    ]

    def loss(p, batch):
        hidden = batch[0]
        for i, layer in enumerate(p):
            hidden = hidden @ layer["W"] + layer["b"]
            hidden = jax.nn.swish(hidden) if i < 2 else hidden
        return jnp.mean((hidden[:, 0] - batch[1]) ** 2)

    return loss, params, data


def _dense_hessian(loss, params, data):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda z: loss(unravel(z), data))(flat)


# --- the SDCP solver ------------------------------------------------------------------------


def _reference_sdcp(q, c, k, iterations=3_000):
    """Projected gradient in numpy (independent of the solver under test)."""
    step = 1.0 / np.linalg.eigvalsh(q)[-1]
    i, j = np.triu_indices(k)
    weights = np.where(i == j, 1.0, np.sqrt(2.0))

    def project(x):
        matrix = np.zeros((k, k))
        matrix[i, j] = x / weights
        matrix[j, i] = x / weights
        values, vectors = np.linalg.eigh(matrix)
        matrix = (vectors * np.maximum(values, 0)) @ vectors.T
        return matrix[i, j] * weights

    x = np.zeros_like(c)
    for _ in range(iterations):
        x = project(x - step * (q @ x + c))
    return x


@pytest.mark.parametrize("k", [2, pytest.param(3, marks=pytest.mark.slow), 4, 6])
def test_sdcp_matches_projected_gradient_on_random_instances(k):
    rng = np.random.default_rng(k)
    m = k * (k + 1) // 2
    solve = jax.jit(solve_sdcp, static_argnums=2)
    for _ in range(3):
        g = rng.standard_normal((m, 3 * m))
        q = 0.5 * g @ g.T / m  # well conditioned: the reference converges linearly
        shift = rng.standard_normal((k, k))
        c = np.asarray(svec(jnp.asarray(shift + shift.T + 0.5 * np.eye(k))))
        x = np.asarray(solve(jnp.asarray(q), jnp.asarray(c), k))
        np.testing.assert_allclose(x, _reference_sdcp(q, c, k), atol=1e-8)
        # The complementarity conditions themselves, to round-off.
        X, S = np.asarray(smat(jnp.asarray(x), k)), np.asarray(smat(jnp.asarray(q @ x + c), k))
        assert np.linalg.eigvalsh(X).min() > -1e-12 and np.linalg.eigvalsh(S).min() > -1e-12
        assert abs(np.sum(X * S)) < 1e-12
        assert float(natural_residual(jnp.asarray(x), jnp.asarray(q), jnp.asarray(c), k)) < 1e-12


def test_sdcp_closed_forms():
    # k = 1: x = max(0, -c / q).
    for c, expected in [(-3.0, 1.5), (2.0, 0.0)]:
        x = solve_sdcp(jnp.array([[2.0]]), jnp.array([c]), 1)
        assert float(x[0]) == expected
    # A decoupled k = 3 instance through the general solver: Q diagonal in svec
    # coordinates and C diagonal give X = diag(max(0, -c_i / q_i)).
    q_diag = jnp.array([2.0, 1.0, 3.0, 0.5, 4.0, 1.5])  # svec order (0,0),(0,1),(0,2),(1,1),...
    c = svec(jnp.diag(jnp.array([-3.0, 1.0, -2.0])))
    X = smat(jax.jit(solve_sdcp, static_argnums=2)(jnp.diag(q_diag), c, 3), 3)
    np.testing.assert_allclose(X, np.diag([1.5, 0.0, 2.0 / 1.5]), atol=1e-14)


# --- the flow -------------------------------------------------------------------------------


def test_third_derivative_rows_match_finite_differences_of_hvps():
    loss, params, data = _swish_mlp()
    w, unravel = ravel_pytree(params)
    grad_flat = lambda x: ravel_pytree(jax.grad(loss)(unravel(x), data))[0]
    vectors = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (w.size, 3)))[0]
    rows = jax.jit(third_derivative_rows, static_argnums=0)(grad_flat, w, vectors)
    hvp = jax.jit(lambda x, v: jax.jvp(grad_flat, (x,), (v,))[1])
    eps = 1e-4
    for row, (i, j) in zip(rows, zip(*np.triu_indices(3))):
        # d/deps H(w + eps u_i) u_j by a fourth-order central difference.
        u, v = vectors[:, i], vectors[:, j]
        difference = (
            -hvp(w + 2 * eps * u, v)
            + 8 * hvp(w + eps * u, v)
            - 8 * hvp(w - eps * u, v)
            + hvp(w - 2 * eps * u, v)
        ) / (12 * eps)
        weight = 1.0 if i == j else np.sqrt(2.0)
        np.testing.assert_allclose(row, weight * difference, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_below_the_threshold_the_field_is_gradient_flow():
    loss, params, data = _swish_mlp()
    lam = dl.lambda_max(loss, params, data)
    flow = dl.CentralFlow(loss, 1.0 / lam, k=1)  # h lambda = 1: far below 2
    # One compilation: the field as a diffrax vector field, and what it solved for.
    field, quantities = eqx.filter_jit(
        lambda y, args: (diffrax.ODETerm(flow).vf(0.0, y, args), flow.quantities(y, args))
    )(params, data)
    assert tree_allclose(field, dl.GradientFlow(loss)(0.0, params, data), rtol=1e-15, atol=0)
    assert np.all(np.asarray(quantities.X) == 0.0)
    assert float(quantities.predicted_loss) == float(loss(params, data))
    np.testing.assert_allclose(
        quantities.eigenvalues[-1], np.linalg.eigvalsh(_dense_hessian(loss, params, data))[-1]
    )


@pytest.mark.slow
def test_sharpness_is_held_at_two_over_h():
    loss, params, data = _swish_mlp()
    lam = dl.lambda_max(loss, params, data)
    h = 1.5 / lam
    ws, quantities = dl.CentralFlow(loss, h, k=2).integrate(params, 30, data, substeps=4)
    _, unravel = ravel_pytree(params)
    sharpness = jax.vmap(
        lambda w: jnp.linalg.eigvalsh(_dense_hessian(loss, w, data))[-1]  # independent of Lanczos
    )(ws)
    np.testing.assert_allclose(quantities.eigenvalues[:, -1], sharpness, rtol=1e-9)
    reached = np.flatnonzero(h * np.asarray(sharpness) >= 2 * (1 - 5e-3))
    assert reached.size and reached[0] < 15  # progressive sharpening brings it to 2/h
    after = h * np.asarray(sharpness)[reached[0] :]
    np.testing.assert_array_less(np.abs(after - 2), 2 * 5e-3)
    # X is on at the threshold, and the predicted loss exceeds the loss by 1/2 <H, Sigma>.
    X = np.asarray(quantities.X)[-1]
    assert np.linalg.eigvalsh(X).max() > 0 and np.linalg.eigvalsh(X).min() > -1e-12
    assert float(quantities.predicted_loss[-1]) > float(quantities.loss[-1])


@pytest.mark.slow
def test_no_central_flow_beyond_the_edge_on_a_quadratic():
    quad = dl.problems.quadratic(4, condition=5.0, lambda_max=1.0, seed=0)
    flow = dl.CentralFlow(quad.loss, 2.5, k=1)  # h lambda = 2.5 and no third derivative
    with pytest.raises(Exception, match="no central flow"):
        jax.block_until_ready(flow(0.0, quad.params, quad.data))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"k": 0}, "`k`"), ({"k": 9}, "`k`"), ({"h": -1.0}, "`h`"), ({"lookahead": 0.0}, "look")],
)
def test_bad_input(kwargs, match):
    loss, _, _ = _swish_mlp()
    with pytest.raises(dl.InputError, match=match):
        dl.CentralFlow(loss, **{"h": 0.1, **kwargs})
