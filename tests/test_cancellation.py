"""Drift cancellation: `CorrectedField` against closed forms, by measured order, and in training."""

import math

import jax
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
import scipy.linalg

import driftlab as dl
from driftlab.analysis._order import fit_slope

from . import helpers


# --- closed forms ---------------------------------------------------------------------------


def test_gd_quadratic_coefficients():
    """GD on 1/2 y^T A y to gradient flow: g_h = (expm(-hA) - I) y/h, g_k = (-A)^(k+1) y/(k+1)!"""
    problem = helpers.small_quadratic(4)
    a = np.asarray(problem.data["A"])
    y = problem.params
    corrected = dl.CorrectedField(dl.GradientDescent(problem.loss), 0.3, 4)
    coefficients = corrected.coefficients(y, problem.data)
    for k, g in enumerate(coefficients):
        exact = np.linalg.matrix_power(-a, k + 1) @ np.asarray(y) / math.factorial(k + 1)
        assert np.max(np.abs(np.asarray(g) - exact)) < 1e-10, k
    # The truncated series against the exact (expm(-hA) - I) y / h: O(h^(p+1)).
    exact = (scipy.linalg.expm(-0.3 * a) - np.eye(len(a))) @ np.asarray(y) / 0.3
    assert np.linalg.norm(corrected(0.0, y, problem.data) - exact) < 0.3**5 * np.linalg.norm(a) ** 6


def _game(dim=2, regularisation=0.3, alpha=1.0, lam=0.5, alternating=False):
    loss_phi, loss_theta = dl.problems.bilinear_game_losses()
    problem = dl.problems.bilinear_game(dim, regularisation=regularisation, seed=0)
    cls = dl.AlternatingGD if alternating else dl.SimultaneousGD
    step = cls(loss_phi, loss_theta, alpha, lam)
    b, p, q = (np.asarray(problem.data[k]) for k in "BPQ")
    # Target (alpha f, lam g) = M y for y = (phi, theta).
    m = np.block([[-alpha * p, -alpha * b], [lam * b.T, -lam * q]])
    return step, problem, m


def _split(vector, dim):
    return vector[:dim], vector[dim:]


def test_simultaneous_game_coefficients():
    """Simultaneous GD is y + h D G: D g_h = (expm(hM) - I) y / h, g_k = D^-1 M^(k+1) y/(k+1)!."""
    alpha, lam, dim = 1.0, 0.5, 2
    step, problem, m = _game(dim, alpha=alpha, lam=lam)
    y = np.concatenate([np.asarray(x) for x in problem.params])
    d = np.concatenate([np.full(dim, alpha), np.full(dim, lam)])
    coefficients = dl.CorrectedField(step, 0.2, 2).coefficients(problem.params, problem.data)
    for k, (g_phi, g_theta) in enumerate(coefficients):
        exact = np.linalg.matrix_power(m, k + 1) @ y / math.factorial(k + 1) / d
        assert np.max(np.abs(np.concatenate([g_phi, g_theta]) - exact)) < 1e-10, k


def _power_series_alternating(m, dim, alpha, lam, order):
    r"""Exact coefficients of G_h for alternating GD matching expm(hM), by power-series algebra.

    phi' = phi + alpha h (P phi + Q theta) and theta' = theta + lam h (R phi' + S theta) equal
    E = expm(hM) iff alpha h P = E11 - I, alpha h Q = E12, lam h R = E21 E11^-1,
    lam h S = E22 - I - lam h R E12.
    """
    n = order + 2
    e = [np.linalg.matrix_power(m, j) / math.factorial(j) for j in range(n + 1)]
    blocks = [(x[:dim, :dim], x[:dim, dim:], x[dim:, :dim], x[dim:, dim:]) for x in e]
    inverse = [np.eye(dim)]
    for k in range(1, n + 1):
        inverse.append(-sum(blocks[j][0] @ inverse[k - j] for j in range(1, k + 1)))
    x = [sum(blocks[j][2] @ inverse[k - j] for j in range(k + 1)) for k in range(n + 1)]
    x_e12 = [sum(x[j] @ blocks[k - j][1] for j in range(k + 1)) for k in range(n + 1)]
    out = []
    for k in range(order + 1):
        p, q = blocks[k + 1][0] / alpha, blocks[k + 1][1] / alpha
        r, s = x[k + 1] / lam, (blocks[k + 1][3] - x_e12[k + 1]) / lam
        out.append(np.block([[p, q], [r, s]]))
    return out


@pytest.mark.slow
def test_alternating_game_coefficients():
    alpha, lam, dim = 1.0, 0.5, 2
    step, problem, m = _game(dim, alpha=alpha, lam=lam, alternating=True)
    y = np.concatenate([np.asarray(x) for x in problem.params])
    exact = _power_series_alternating(m, dim, alpha, lam, 2)
    coefficients = dl.CorrectedField(step, 0.2, 2).coefficients(problem.params, problem.data)
    for k, (g_phi, g_theta) in enumerate(coefficients):
        assert np.max(np.abs(np.concatenate([g_phi, g_theta]) - exact[k] @ y)) < 1e-10, k


# --- gradient structure and the corrected loss ----------------------------------------------


@pytest.mark.slow
def test_gradient_verdicts():
    problem = helpers.small_quadratic(4)
    corrected = dl.CorrectedField(dl.GradientDescent(problem.loss), 0.3, 1)
    structure = dl.is_gradient_field(corrected, problem.params, problem.data)
    assert structure.coefficient_is_gradient == (True, True) and structure.is_gradient
    # On a nonlinear loss, g_2 = [t^3] of gradient flow = -(T[g, g] + H^2 g)/6 is not a gradient
    # (the time-h map of a gradient flow has a non-symmetric Jacobian); g_0, g_1 are.
    mlp = helpers.small_mlp()
    corrected = dl.CorrectedField(dl.GradientDescent(mlp.loss), 0.4, 2)
    structure = dl.is_gradient_field(corrected, mlp.params, mlp.data, num_probes=2)
    assert structure.coefficient_is_gradient == (True, True, False), structure
    # The pure bilinear game, equal steps: g_0 ~ M y and g_2 ~ M^3 y rotate, g_1 ~ M^2 y is
    # symmetric (the square of an antisymmetric matrix).
    step, problem, _ = _game(2, regularisation=0.0, alpha=1.0, lam=1.0)
    corrected = dl.CorrectedField(step, 0.2, 2)
    structure = dl.is_gradient_field(corrected, problem.params, problem.data)
    assert structure.coefficient_is_gradient == (False, True, False)
    with pytest.raises(dl.InputError, match="not a gradient"):
        dl.CorrectedField(step, 0.2, 0).modified_loss(problem.params, problem.data)


@pytest.mark.slow
def test_corrected_loss_gd_order_one():
    """Order 1: L - h/4 ||grad L||^2, up to the constant fixed at the reference; gradient -g_h."""
    problem = helpers.small_mlp()
    loss, data, h = problem.loss, problem.data, 0.2
    corrected = dl.CorrectedField(dl.GradientDescent(loss), h, 1)
    y = problem.params
    reference = jtu.tree_map(lambda x: 0.9 * x, y)

    def closed(p):
        g = jax.grad(loss)(p, data)
        return loss(p, data) - 0.25 * h * dl._tree.tree_vdot(g, g)

    value = corrected.modified_loss(y, data, reference=reference)
    expected = closed(y) - closed(reference) + loss(reference, data)
    assert abs(float(value - expected)) < 1e-10
    gradient = jax.grad(lambda p: corrected.modified_loss(p, data, reference=reference))(y)
    assert helpers.tree_allclose(gradient, jax.grad(closed)(y), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_optax_training_on_corrected_loss_follows_gradient_flow():
    problem = helpers.small_mlp()
    loss, data, params, h, n = problem.loss, problem.data, problem.params, 0.4, 10
    corrected = dl.CorrectedField(dl.GradientDescent(loss), h, 1)
    optimiser = optax.sgd(h)

    @jax.jit
    def train_step(p, state):
        grads = jax.grad(corrected.modified_loss)(p, data)
        updates, state = optimiser.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    p, state = params, optimiser.init(params)
    for _ in range(n):
        p, state = train_step(p, state)
    driven = dl.iterate(corrected.driven_map(), params, h, n, data)
    assert helpers.tree_allclose(p, jtu.tree_map(lambda x: x[-1], driven), rtol=1e-10)
    flow = dl.solve(dl.GradientFlow(loss), params, n * h, args=data)
    plain = dl.integrators.advance(dl.GradientDescent(loss), params, h, n, data)
    distance = lambda q: float(dl._tree.tree_norm(dl._tree.tree_sub(q, flow)))  # noqa: E731
    assert distance(p) < 0.5 * distance(plain), (distance(p), distance(plain))


# --- measured orders --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_local_order_gd_mlp(order):
    problem = helpers.small_mlp()
    corrected = dl.CorrectedField(dl.GradientDescent(problem.loss), 0.1, order)
    estimate = dl.order_of_accuracy(
        corrected.driven_map(),
        lambda h: dl.GradientFlow(problem.loss),
        problem.params,
        [0.1, 0.2, 0.4],
        "local",
        problem.data,
        expected=order + 2,
        check_stability=False,
    )
    assert estimate.agrees(0.25), estimate


@pytest.mark.slow
@pytest.mark.parametrize("order", [0, 1])  # order 2 passes too (86 s: nested jets through scan)
def test_local_order_sgd_epoch_mlp(order):
    problem = helpers.small_mlp()
    step = dl.SGDEpoch(problem.loss)
    corrected = dl.CorrectedField(step, 0.1, order)
    estimate = dl.order_of_accuracy(
        corrected.driven_map(),
        lambda h: corrected.target,
        problem.params,
        [0.05, 0.1, 0.2],
        "local",
        problem.batches(2),
        expected=order + 2,
        check_stability=False,
    )
    assert estimate.agrees(0.25), estimate


@pytest.mark.slow
def test_local_order_heavy_ball_slow_manifold():
    """Heavy-ball driven by g_h, started on its slow manifold, follows -grad L / (1 - beta)."""
    problem = helpers.small_quadratic(4)
    step = dl.HeavyBall(problem.loss, 0.5)
    hs = [0.01, 0.02, 0.04]  # h lambda_max < (1 - sqrt(beta))^2 = 0.086
    for order in [1]:  # order 0 is plain heavy-ball; order 2 passes too but takes minutes
        corrected = dl.CorrectedField(step, 0.0, order)
        driven = corrected.driven_map()
        errors = []
        for h in hs:
            start = dl.ModifiedFlow(driven, h, order).slow_state(problem.params, problem.data)
            # `start` is the driven map's slow state: keep it (not the target's `slow_state`).
            measured = dl.local_error(
                driven, corrected.target, start, h, problem.data, on_slow_manifold=False
            )
            errors.append(measured.error)
        slope = fit_slope(np.array(hs), np.array(errors), np.ones(3, bool))[0]
        assert abs(slope - (order + 2)) < 0.25, (order, errors, slope)


# --- input errors ---------------------------------------------------------------------------


def test_bad_input():
    problem = helpers.small_quadratic(4)
    with pytest.raises(dl.InputError, match="`order`"):
        dl.CorrectedField(dl.GradientDescent(problem.loss), 0.1, -1)
    with pytest.raises(dl.InputError, match="`h`"):
        dl.CorrectedField(dl.GradientDescent(problem.loss), -0.1, 1)
    with pytest.raises(dl.InputError, match="`step_map`"):
        dl.CorrectedField(dl.Adam(problem.loss), 0.1, 1)
    with pytest.raises(dl.InputError, match="`target`"):
        dl.CorrectedField(dl.GradientDescent(problem.loss), 0.1, 1, target=3.0)
