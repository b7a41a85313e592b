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


@pytest.mark.parametrize("k", [2, *(pytest.param(k, marks=pytest.mark.slow) for k in (3, 4, 6))])
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


# --- RMSPropCentralFlow ---------------------------------------------------------------------


def _rmsprop_state(params, nu):
    return dl.integrators.RMSPropState(params, nu)


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@eqx.filter_jit
def _field_and_quantities(flow, y, args):
    # One compilation per flow structure, shared by the tests below (h, rho, nu are traced).
    return flow(0.0, y, args), flow.quantities(y, args)


def _uniform_eps_free_flow(loss, h, rho):
    """P = sqrt(nu) (eps = 0), k = 2, the lookahead given: one structure for the tests."""
    return dl.RMSPropCentralFlow(
        loss, h, rho=rho, eps=0.0, eps_inside_sqrt=False, k=2, lookahead=h / 4
    )


@pytest.mark.slow
def test_rmsprop_below_the_threshold_is_preconditioned_gradient_flow():
    loss, params, data = _swish_mlp()
    grad = jax.grad(loss)(params, data)
    # nu off its slow manifold (g^2 plus a positive offset), so both parts of the field move.
    offset = lambda g: 0.05 * (1 + jnp.cos(jnp.arange(g.size))).reshape(g.shape) + 1e-3
    nu = jax.tree.map(lambda g: g**2 + offset(g), grad)
    rho, h = 0.9, 1e-3  # h * preconditioned sharpness ~ 0.05: far below 2
    flow = _uniform_eps_free_flow(loss, h, rho)
    field, quantities = _field_and_quantities(flow, _rmsprop_state(params, nu), data)
    g, v = _flat(grad), _flat(nu)
    # The plain preconditioned gradient flow and the moving average's relaxation, in time t = nh.
    np.testing.assert_allclose(_flat(field.params), -g / np.sqrt(v), rtol=1e-14, atol=0)
    rate = (1 - rho) / (rho * h)
    np.testing.assert_allclose(
        _flat(field.nu), rate * (g**2 - v), rtol=0, atol=1e-14 * rate * v.max()
    )
    assert np.all(np.asarray(quantities.X) == 0.0)
    assert float(quantities.predicted_loss) == float(loss(params, data))
    assert float(h * quantities.eigenvalues[-1]) < 0.5


@pytest.mark.slow
def test_rmsprop_with_a_frozen_uniform_preconditioner_is_gd_central_flow():
    # rho = 1 freezes nu; nu = c^2 with eps = 0 makes RMSProp GD with step h / c.
    loss, params, data = _swish_mlp()
    c = 3.0
    h = 2.5 * c / float(dl.lambda_max(loss, params, data))  # beyond the edge: X is on
    y = _rmsprop_state(params, jax.tree.map(lambda p: jnp.full_like(p, c**2), params))
    _, q_ours = _field_and_quantities(_uniform_eps_free_flow(loss, h, 1.0), y, data)
    gd = dl.CentralFlow(loss, h / c, k=2, lookahead=h / 4 / c)  # the same lookahead, in steps
    q_gd = eqx.filter_jit(gd.quantities)(params, data)
    n = q_gd.velocity.size
    assert np.linalg.eigvalsh(np.asarray(q_gd.X)).max() > 0
    np.testing.assert_allclose(q_ours.velocity[:n], q_gd.velocity / c, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(q_ours.velocity[n:]) == 0.0)
    np.testing.assert_allclose(q_ours.eigenvalues * c, q_gd.eigenvalues, rtol=1e-12)
    covariance = lambda q: q.eigenvectors @ q.X @ q.eigenvectors.T
    np.testing.assert_allclose(covariance(q_ours), covariance(q_gd), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(q_ours.predicted_loss, q_gd.predicted_loss, rtol=1e-13)


@pytest.fixture(scope="module")
def rmsprop_run():
    """40 RMSProp steps of the central flow on the swish MLP: its sharpness reaches 2/h.

    Euler with the lookahead as its step (what `integrate` does), through the field
    compiled once for all these tests.
    """
    loss, params, data = _swish_mlp()
    nu0 = jax.tree.map(jnp.square, jax.grad(loss)(params, data))
    flow = _uniform_eps_free_flow(loss, 0.02, 0.9)
    y, ys, quantities = _rmsprop_state(params, nu0), [], []
    for step in range(41 * 4):
        field, q = _field_and_quantities(flow, y, data)
        if step % 4 == 0:
            ys.append(y)
            quantities.append(q)
        y = jax.tree.map(lambda a, b: a + flow.tau * b, y, field)
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    return loss, data, flow, stack(ys), stack(quantities)


@jax.jit
def _dense_preconditioned(params, nu, data):
    loss, _, _ = _swish_mlp()
    hessian = _dense_hessian(loss, params, data)
    scale = ravel_pytree(nu)[0] ** -0.25  # P^(-1/2), P = sqrt(nu) (eps = 0, outside the root)
    return hessian, jnp.linalg.eigvalsh(scale[:, None] * hessian * scale[None, :])


@pytest.mark.slow
def test_rmsprop_preconditioned_sharpness_is_held_at_two_over_h(rmsprop_run):
    loss, data, flow, ys, quantities = rmsprop_run
    h = float(flow.h)
    # Dense, independent of Lanczos.
    sharpness = np.asarray(jax.vmap(_dense_preconditioned, (0, 0, None))(ys.params, ys.nu, data)[1])
    sharpness = sharpness[:, -1]
    np.testing.assert_allclose(quantities.eigenvalues[:, -1], sharpness, rtol=1e-9)
    reached = np.flatnonzero(np.abs(h * sharpness - 2) <= 2 * 5e-3)
    assert reached.size and reached[0] < 20
    np.testing.assert_array_less(np.abs(h * sharpness[reached[0] :] - 2), 2 * 5e-3)
    X = np.asarray(quantities.X)[-1]
    assert np.linalg.eigvalsh(X).max() > 0 and np.linalg.eigvalsh(X).min() > -1e-12
    assert float(quantities.predicted_loss[-1]) > float(quantities.loss[-1])


@pytest.mark.slow
def test_rmsprop_nu_equation_against_a_dense_hessian(rmsprop_run):
    # At the edge, nu is driven by the mean squared gradient of the oscillating iterate,
    # g^2 + diag(H Sigma H), H from a dense Hessian (not the Ritz relation the flow uses).
    loss, data, flow, ys, quantities = rmsprop_run
    params = jax.tree.map(lambda a: a[-1], ys.params)
    nu = jax.tree.map(lambda a: a[-1], ys.nu)
    q = jax.tree.map(lambda a: a[-1], quantities)
    hessian, _ = _dense_preconditioned(params, nu, data)
    hessian = np.asarray(hessian)
    sigma = np.asarray(q.eigenvectors @ q.X @ q.eigenvectors.T)
    g, v = _flat(jax.grad(loss)(params, data)), _flat(nu)
    rate = (1 - float(flow.rho)) / (float(flow.rho) * float(flow.h))
    oscillation = np.diag(hessian @ sigma @ hessian)
    expected = rate * (g**2 + oscillation - v)
    # The flow evaluates diag(H Sigma H) on the boundary, H u_i = (2/h) P u_i; off it each
    # pair (i, j) of Sigma = U X U^T is off by the factor 1 - h^2 lambda_i lambda_j / 4.
    h, X, U = float(flow.h), np.asarray(q.X), np.asarray(q.eigenvectors)
    lam = np.asarray(q.eigenvalues)
    gap = np.max(np.where(X != 0, np.abs(1 - h**2 * np.outer(lam, lam) / 4), 0.0))
    bound = rate * gap * (4 / h**2) * v * np.einsum("ki,ij,kj->k", np.abs(U), np.abs(X), np.abs(U))
    assert gap < 1e-3 and np.linalg.norm(oscillation) > 0.1 * np.linalg.norm(g**2 - v)
    n = g.size
    error = np.abs(np.asarray(q.velocity[n:]) - expected)
    np.testing.assert_array_less(error, 1.01 * bound + 1e-10 * rate * np.abs(oscillation).max())


def test_rmsprop_flow_state_is_the_map_after_its_update():
    loss, params, data = _swish_mlp()
    nu = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    state = _rmsprop_state(params, nu)
    flow = dl.RMSPropCentralFlow(loss, 0.01, rho=0.8)
    after = dl.RMSProp(loss, rho=0.8)(state, 0.01, data)
    assert tree_allclose(flow.flow_state(state, data).nu, after.nu, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rho": 0.0}, "`rho`"), ({"rho": 1.5}, "`rho`"), ({"eps": -1.0}, "`eps`"), ({"k": 9}, "`k`")],
)
def test_rmsprop_bad_input(kwargs, match):
    loss, _, _ = _swish_mlp()
    with pytest.raises(dl.InputError, match=match):
        dl.RMSPropCentralFlow(loss, **{"h": 0.1, **kwargs})


def test_rmsprop_state_must_carry_nu():
    loss, params, data = _swish_mlp()
    with pytest.raises(dl.InputError, match="RMSPropState"):
        dl.RMSPropCentralFlow(loss, 0.1)(0.0, params, data)
