"""The principal flow: exact on quadratics on both sides of 1/lambda and 2/lambda, edge cases,
Lanczos against dense, the documented difference from ModifiedFlow, and its order on the MLP."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.flows import ModifiedFlow

from . import helpers
from .literature_helpers import hvp, tiny_mlp


@pytest.fixture(scope="module")
def quadratic():
    problem = dl.problems.quadratic(6, condition=10.0, lambda_max=1.0, seed=0)
    data = dict(problem.data, b=jnp.asarray(np.random.default_rng(3).standard_normal(6)))
    return problem, data


@pytest.mark.parametrize("h_lambda", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_exact_on_quadratic_at_multiples_of_h(quadratic, h_lambda, method):
    problem, data = quadratic
    h = h_lambda / problem.lambda_max
    flow = dl.PrincipalFlow(problem.loss, h, method=method, k=6, num_iterations=6)
    ts = h * np.arange(1, 5)
    y0 = problem.params.astype(jnp.complex128)
    ys = np.asarray(dl.solve(flow, y0, ts[-1], ts=ts, args=data, rtol=1e-14, atol=1e-14))
    gd = np.asarray(dl.iterate(dl.GradientDescent(problem.loss), problem.params, h, 4, data))[1:]
    errors = np.linalg.norm(ys - gd, axis=1) / np.linalg.norm(gd, axis=1)
    # Measured: <= 6e-12 everywhere; GD oscillates (h lambda > 1) and diverges (> 2).
    assert np.max(errors) < 1e-10


@pytest.mark.parametrize("h_lambda", [1.5, 2.5])
def test_path_between_steps_is_the_principal_power(quadratic, h_lambda):
    # Between multiples of h the path is theta* + (I - hA)^(t/h) (theta_0 - theta*) on the
    # principal branch (log(h lambda - 1) + i pi). The other branch (-i pi) agrees at t = nh
    # but differs here by 4% to 114% (conjugate phases for each h lambda > 1 direction).
    problem, data = quadratic
    h = h_lambda / problem.lambda_max
    ts = h * np.array([1 / 3, 1 / 2, 4 / 3, 5 / 2])
    y0 = problem.params.astype(jnp.complex128)
    ys = np.asarray(dl.solve(dl.PrincipalFlow(problem.loss, h), y0, ts[-1], ts=ts, args=data))
    a, start = np.asarray(problem.A), np.asarray(problem.params)
    minimum = np.linalg.solve(a, np.asarray(data["b"]))
    power = lambda s: scipy.linalg.fractional_matrix_power(np.eye(len(a)) - h * a, s)
    exact = np.array([minimum + power(t / h) @ (start - minimum) for t in ts])
    # Off the grid the path is genuinely complex: this is where the branch shows.
    assert np.all(np.linalg.norm(exact.imag, axis=1) > 1e-2 * np.linalg.norm(exact, axis=1))
    errors = np.linalg.norm(ys - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.max(errors) < 1e-10  # the solver's tolerance (1e-12) sets it; measured 7e-14


def test_singular_and_complex_edge_cases(quadratic):
    problem, data = quadratic
    h = 1.0 / problem.lambda_max
    with pytest.raises(Exception, match="does not exist"):
        jax.block_until_ready(
            dl.PrincipalFlow(problem.loss, h)(0.0, problem.params.astype(jnp.complex128), data)
        )
    with pytest.raises(Exception, match="complex128"):
        jax.block_until_ready(dl.PrincipalFlow(problem.loss, 1.5 * h)(0.0, problem.params, data))
    # Inside a solve the run-time check becomes a MeasurementError naming the flow once.
    with pytest.raises(dl.MeasurementError, match=r"^PrincipalFlow: h \* lambda_i >= 1") as info:
        dl.solve(dl.PrincipalFlow(problem.loss, 1.5 * h), problem.params, h, args=data)
    assert str(info.value).count("PrincipalFlow") == 1
    with pytest.raises(dl.InputError, match="method"):
        dl.PrincipalFlow(problem.loss, h, method="eig")


def test_zero_eigenvalue_uses_the_limit():
    a = jnp.diag(jnp.array([0.0, 1.0, 2.0]))
    data = {"A": a, "b": jnp.zeros(3)}
    y = jnp.array([1.0, -1.0, 0.5])
    h = 0.3
    field = dl.PrincipalFlow(dl.problems.quadratic_loss, h)(0.0, y, data)
    lam = np.array([0.0, 1.0, 2.0])
    coefficient = np.where(lam == 0, -1.0, np.log1p(-h * lam) / (h * np.where(lam == 0, 1, lam)))
    assert np.allclose(field, coefficient * lam * np.asarray(y), rtol=1e-14, atol=0)
    # lambda = 0 contributes -g exactly (here g has no component there: field 0).
    assert field[0] == 0.0


@pytest.mark.slow
def test_lanczos_against_dense_and_igr():
    problem = tiny_mlp()
    y, data, h = problem.params, problem.data, 0.2
    call = lambda flow: eqx.filter_jit(flow)(0.0, y, data)
    dense = call(dl.PrincipalFlow(problem.loss, h))
    n = sum(leaf.size for leaf in jtu.tree_leaves(y))
    full = call(dl.PrincipalFlow(problem.loss, h, method="lanczos", k=n, num_iterations=n))
    assert helpers.relative_error(full, dense) < 1e-9
    # k = 0: the remainder treatment alone is IGR.
    none = call(dl.PrincipalFlow(problem.loss, h, method="lanczos", k=0, num_iterations=1))
    assert helpers.relative_error(none, call(dl.IGRFlow(problem.loss, h))) < 1e-13
    # Top-k with the remainder to first order. With converged Ritz pairs, top - dense is
    # exactly -sum_{i > k} [c(h lambda_i) + 1 + h lambda_i / 2] (g . u_i) u_i over the dense
    # eigenpairs (the docstring's identity); 30 Lanczos steps converge the top 10 of 160
    # eigenpairs far below 1% (measured: the identity holds to 4e-5 of the remainder).
    top = call(dl.PrincipalFlow(problem.loss, h, method="lanczos", k=10, num_iterations=30))
    flat, unravel = ravel_pytree(y)
    hessian = jax.hessian(lambda p: problem.loss(unravel(p), data))(flat)
    lam, u = np.linalg.eigh(np.asarray(hessian))
    x = h * lam
    c = np.where(np.abs(x) < 1e-8, -1.0, np.log1p(-x) / np.where(np.abs(x) < 1e-8, 1.0, x))
    g = u.T @ np.asarray(ravel_pytree(jax.grad(problem.loss)(y, data))[0])
    remainder = u[:, :-10] @ ((c + 1 + x / 2)[:-10] * g[:-10])
    predicted = np.asarray(ravel_pytree(dense)[0]) - remainder
    assert helpers.relative_error(ravel_pytree(top)[0], predicted) < 1e-2 * np.linalg.norm(
        remainder
    ) / np.linalg.norm(predicted)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_uncut_lanczos_field_is_the_krylov_matrix_function():
    # k = num_iterations = m < n: nothing is cut and the field acting on v is
    # Q c(hT) Q^T v over an orthonormal basis Q of the Krylov space K_m(H, v), T = Q^T H Q
    # (the docstring's smooth form), for both vectors of a complex state past h lambda = 1.
    problem = tiny_mlp()
    params, data, m = problem.params, problem.data, 8
    flat, unravel = ravel_pytree(params)
    hessian = np.asarray(jax.hessian(lambda p: problem.loss(unravel(p), data))(flat))
    h = 1.6 / np.linalg.eigvalsh(hessian)[-1]
    imaginary = 1e-2 * np.random.default_rng(0).standard_normal(flat.size)
    y = unravel(flat + 1j * imaginary)
    field = eqx.filter_jit(
        dl.PrincipalFlow(problem.loss, h, method="lanczos", k=m, num_iterations=m)
    )(0.0, y, data)

    def krylov_function(v):
        basis = [v / np.linalg.norm(v)]
        for _ in range(m - 1):
            w = hessian @ basis[-1]
            for _ in range(2):
                w = w - np.stack(basis).T @ (np.stack(basis) @ w)
            basis.append(w / np.linalg.norm(w))
        q = np.stack(basis, axis=1)
        x, s = np.linalg.eigh(h * q.T @ hessian @ q)
        c = np.log((1 - x).astype(complex)) / x
        return q @ (s @ (c * (s.T @ (q.T @ v))))

    gradient = np.asarray(ravel_pytree(jax.grad(problem.loss)(params, data))[0])
    expected = krylov_function(gradient) + 1j * krylov_function(hessian @ imaginary)
    assert helpers.relative_error(ravel_pytree(field)[0], expected) < 1e-9


@pytest.mark.slow
def test_difference_from_modified_flow_is_the_third_derivative_term():
    # Principal flow = -g - h/2 Hg - h^2/3 H^2 g + O(h^3); GD's f_2 = -T[g,g]/12 - H^2 g/3.
    # So (principal - ModifiedFlow(GD, order 2)) / h^2 -> T[g, g] / 12.
    problem = tiny_mlp()
    y, data = problem.params, problem.data
    grad = jax.grad(problem.loss)(y, data)
    inner = lambda p: hvp(problem.loss, p, data, grad)
    third = jax.jvp(inner, (y,), (grad,))[1]  # T[g, g] with g held fixed
    limit = jtu.tree_map(lambda t: t / 12, third)
    scaled = []
    for h in [1e-2, 5e-3, 2.5e-3]:
        principal = eqx.filter_jit(dl.PrincipalFlow(problem.loss, h))(0.0, y, data)
        automatic = ModifiedFlow(dl.GradientDescent(problem.loss), h, order=2)(0.0, y, data)
        scaled.append(jtu.tree_map(lambda a, b: (a - b) / h**2, principal, automatic))
    differences = [helpers.relative_error(s, limit) for s in scaled]
    # The scaled difference is T[g, g]/12 + h E + O(h^2): each halving of h halves its
    # distance to T[g, g]/12 (a wrong limit would leave a ratio near 1), and the Richardson
    # extrapolate 2 s(h/2) - s(h) removes h E, leaving O(h^2): a ratio of 4 per halving.
    # Measured: distances 8.3e-2, 4.1e-2, 2.0e-2; extrapolates 1.3e-3, 3.1e-4.
    extrapolated = [
        helpers.relative_error(jtu.tree_map(lambda a, b: 2 * b - a, s, t), limit)
        for s, t in zip(scaled, scaled[1:])
    ]
    for first, second in zip(differences, differences[1:]):
        assert 1.8 < first / second < 2.2
    assert 3.5 < extrapolated[0] / extrapolated[1] < 4.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "global"])
def test_principal_order_on_mlp(kind):
    problem = helpers.small_mlp()
    estimate = dl.order_of_accuracy(
        dl.GradientDescent(problem.loss),
        lambda h: dl.PrincipalFlow(problem.loss, h, method="lanczos", k=8, num_iterations=16),
        problem.params,
        [0.2, 0.1, 0.05],
        kind,
        problem.data,
        t_end=0.8,
    )
    assert estimate.agrees(0.3), str(estimate)


@pytest.mark.slow
@pytest.mark.parametrize("h_lambda", [1.5, 2.5])
def test_measurements_with_a_complex_state_see_gd_on_the_flow(quadratic, h_lambda):
    # Beyond h lambda = 1 the measurements solve the flow on a complex state and compare real
    # parts: GD's iterates lie on the principal flow, so every error is at round-off.
    problem, data = quadratic
    h = h_lambda / problem.lambda_max
    step, flow = dl.GradientDescent(problem.loss), dl.PrincipalFlow(problem.loss, h)
    kwargs = dict(rtol=1e-14, atol=1e-14, complex_state=True)
    local = dl.local_error(step, flow, problem.params, h, data, **kwargs)
    total = dl.global_error(step, flow, problem.params, h, 4 * h, data, **kwargs)
    drift = dl.drift(step, flow, problem.params, h, 4, data, **kwargs)
    gd = np.asarray(dl.iterate(step, problem.params, h, 4, data))
    assert total.num_steps == 4
    assert local.error < 1e-10 * local.scale and total.error < 1e-10 * np.linalg.norm(gd[-1])
    assert np.all(drift.errors < 1e-10 * np.linalg.norm(gd, axis=1))
    assert np.allclose(drift.flow_norms, np.linalg.norm(gd, axis=1), rtol=1e-10)
    # The same measurement on a real state is refused: the field is complex there.
    with pytest.raises(dl.MeasurementError, match="complex128"):
        dl.local_error(step, flow, problem.params, h, data)


def test_a_dense_field_on_many_parameters_warns_naming_lanczos(capfd):
    # 300 parameters: the dense field diagonalises a 300 x 300 Hessian per evaluation.
    n = 300
    eigenvalues = jnp.linspace(0.1, 1.0, n)
    loss = lambda y, args: 0.5 * jnp.sum(eigenvalues * y**2)
    y0, h = jnp.ones(n), 0.1
    step = dl.GradientDescent(loss)
    with pytest.warns(dl.CostWarning, match=r"300 x 300 Hessian .* method='lanczos'"):
        dense = dl.local_error(step, dl.PrincipalFlow(loss, h), y0, h)
    assert "100.00%" in capfd.readouterr().out  # the costly solve showed its progress
    # The advice holds: Lanczos with k = num_iterations = n gives the same measurement.
    lanczos = dl.PrincipalFlow(loss, h, method="lanczos", k=n, num_iterations=n)
    assert dl.PrincipalFlow(loss, h).cost_advice(y0) is not None
    assert lanczos.cost_advice(y0) is None
    assert dense.error < 1e-10  # GD on a quadratic lies on its principal flow
    small = jnp.ones(10)
    assert dl.PrincipalFlow(loss, h).cost_advice(small) is None
