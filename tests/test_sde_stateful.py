"""Minibatch optimisers with state and their SDEs: sampling, drift and noise, exact moments."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import driftlab as dl
from driftlab.analysis import (
    momentum_moments,
    sme_moments,
    weak_error,
    weak_order_of_accuracy,
    WeakOrderEstimate,
)
from driftlab.flows import AdamSME, MomentumSME, RMSPropSME
from driftlab.integrators import (
    AdamState,
    MomentumState,
    RandomBatch,
    RandomBatchSGD,
    RMSPropState,
)


Y0 = np.array([1.0, -0.5, 0.3])
NU0 = np.array([0.5, 1.0, 2.0])
LOSS = dl.problems.quadratic_loss


def _batches(num=4, seed=1):
    return dl.problems.quadratic_batches(3, num, linear_terms=True, seed=seed)[1]


def _unit_gradients(batches, theta):
    return np.einsum("kij,j->ki", np.asarray(batches["A"]), theta) - np.asarray(batches["b"])


def _flat_diffusion(tree, num):
    return np.concatenate([np.asarray(leaf).reshape(-1, num) for leaf in jax.tree.leaves(tree)])


def _check_noise(sde, y, expected_covariance):
    """G G^T against the exact covariance, and the matrix-free noise against G dW."""
    g = eqx.filter_jit(sde.diffusion)(0.0, y)
    flat = _flat_diffusion(g, sde.num_noise)
    np.testing.assert_allclose(flat @ flat.T, expected_covariance, atol=1e-12)
    dw = jr.normal(jr.key(0), (sde.num_noise,))
    matrix_free = eqx.filter_jit(sde.noise)(0.0, y, None, dw)
    for leaf, full in zip(jax.tree.leaves(matrix_free), jax.tree.leaves(g)):
        np.testing.assert_allclose(leaf, full @ dw, atol=1e-13)


@pytest.mark.parametrize(
    "examples, batch_size, replacement", [(False, 1, True), (False, 2, False), (True, 3, True)]
)
def test_random_batch_draws_the_batches_of_random_batch_sgd(examples, batch_size, replacement):
    if examples:
        problem = dl.problems.logistic_digits(num_samples=6)
        loss, data, params = problem.loss, problem.data, problem.params
    else:
        loss, data, params = LOSS, _batches(), jnp.asarray(Y0)
    sgd = RandomBatchSGD(loss, batch_size, replacement, examples)
    wrapped = RandomBatch(dl.GradientDescent(loss), batch_size, replacement, examples)
    a = dl.iterate(sgd, sgd.init(params, key=jr.key(2)), 0.1, 4, data)
    b = dl.iterate(wrapped, wrapped.init(params, key=jr.key(2)), 0.1, 4, data)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.state)):
        np.testing.assert_allclose(x, y, atol=1e-14)
    np.testing.assert_array_equal(a.key, b.key)


@pytest.mark.parametrize(
    "map_",
    [
        dl.HeavyBall(LOSS, 0.5),
        dl.RMSProp(LOSS, 0.9, eps=0.1),
        dl.OptaxStepMap(LOSS, lambda h: optax.adam(h, b1=0.8)),
    ],
    ids=["heavy-ball", "rmsprop", "optax-adam"],
)
def test_random_batch_step_is_the_map_on_the_drawn_batch(map_):
    batches, h = _batches(), 0.1
    step = RandomBatch(map_)
    state = step.init(jnp.asarray(Y0), key=jr.key(5))
    _, indices = step.next_minibatch(state.key, batches)
    on_batch = map_(state.state, h, jax.tree.map(lambda x: x[indices[0]], batches))
    for x, y in zip(jax.tree.leaves(step(state, h, batches).state), jax.tree.leaves(on_batch)):
        np.testing.assert_allclose(x, y, atol=1e-15)
    assert np.array_equal(step.parameters(state), Y0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sme_drift_and_noise(nesterov):
    batches, h, beta = _batches(), 0.2, 0.6
    map_ = (dl.Nesterov if nesterov else dl.HeavyBall)(LOSS, beta)
    sde = MomentumSME.of(RandomBatch(map_), batches, h)
    grads = _unit_gradients(batches, Y0)
    np.testing.assert_allclose(sde(0.0, jnp.asarray(Y0)), -grads.mean(0) / (1 - beta), atol=1e-14)
    centred = grads - grads.mean(0)
    _check_noise(sde, jnp.asarray(Y0), h * centred.T @ centred / 4 / (1 - beta) ** 2)
    assert np.array_equal(sde.observe(map_.init(jnp.asarray(Y0))), Y0)


def _rmsprop_increments(batches, theta, nu, rate, eps):
    """Per-unit F_0 = (-g_k / sqrt(v + eps), c (g_k^2 - v)), by hand."""
    grads = _unit_gradients(batches, theta)
    return np.concatenate([-grads / np.sqrt(nu + eps), rate * (grads**2 - nu)], axis=1)


def test_rmsprop_sme_drift_and_noise_against_the_formulas():
    batches, h, rate, eps = _batches(), 0.1, 0.7, 0.05
    y = RMSPropState(jnp.asarray(Y0), jnp.asarray(NU0))
    sde1 = RMSPropSME(LOSS, batches, h, rate, eps, order=1)
    increments = _rmsprop_increments(batches, Y0, NU0, rate, eps)
    drift1 = increments.mean(0)
    got = sde1(0.0, y)
    np.testing.assert_allclose(np.concatenate([got.params, got.nu]), drift1, atol=1e-14)
    centred = increments - increments.mean(0)
    _check_noise(sde1, y, h * centred.T @ centred / 4)

    # Order 2: b0 + h (E F_1 - b0' b0 / 2), with b0' by central differences of the formula.
    def b0(state):
        return _rmsprop_increments(batches, state[:3], state[3:], rate, eps).mean(0)

    state, delta = np.concatenate([Y0, NU0]), 1e-6
    jacobian = np.stack(
        [(b0(state + delta * e) - b0(state - delta * e)) / (2 * delta) for e in np.eye(6)], 1
    )
    grads = _unit_gradients(batches, Y0)
    f1 = rate * 0.5 * (NU0 + eps) ** -1.5 * (grads * (grads**2 - NU0)).mean(0)
    expected = b0(state) + h * (np.concatenate([f1, np.zeros(3)]) - 0.5 * jacobian @ b0(state))
    got = RMSPropSME(LOSS, batches, h, rate, eps, order=2)(0.0, y)
    np.testing.assert_allclose(np.concatenate([got.params, got.nu]), expected, atol=1e-8)


def test_rmsprop_sme_mean_increments_are_the_maps():
    """E F_0 and E F_1 of the order-2 drift, read off RMSProp itself at 1 - rho = c h."""
    batches, rate, eps = _batches(), 0.7, 0.05
    y = RMSPropState(jnp.asarray(Y0), jnp.asarray(NU0))

    def mean_increment(h):  # E (Phi_h(y, B) - y) / h over the 4 units
        step = dl.RMSProp(LOSS, 1 - rate * h, eps)
        ends = [step(y, h, jax.tree.map(lambda x: x[k], batches)) for k in range(4)]
        flat = [np.concatenate([e.params, e.nu]) for e in ends]
        return (np.mean(flat, 0) - np.concatenate([Y0, NU0])) / h

    delta = 1e-4
    f0 = 2 * mean_increment(delta) - mean_increment(2 * delta)  # Richardson: E F_0 + O(delta^2)
    f1 = (mean_increment(2 * delta) - mean_increment(delta)) / delta  # E F_1 + O(delta)
    sde = RMSPropSME(LOSS, batches, 0.1, rate, eps, order=1)
    b0 = sde(0.0, y)
    np.testing.assert_allclose(np.concatenate([b0.params, b0.nu]), f0, atol=1e-6)
    order2 = RMSPropSME(LOSS, batches, 1.0, rate, eps, order=2)(0.0, y)
    _, transported = jax.jvp(lambda s: sde(0.0, s), (y,), (b0,))
    correction = jax.tree.map(lambda a, b, t: a - b + 0.5 * t, order2, b0, transported)
    np.testing.assert_allclose(np.concatenate([correction.params, correction.nu]), f1, atol=1e-3)


def test_adam_sme_drift_and_noise_against_the_formulas():
    batches, h, rates, eps = _batches(), 0.1, (0.8, 0.3), 0.05
    mu0 = np.array([0.2, -0.1, 0.4])
    y = AdamState(jnp.asarray(Y0), jnp.asarray(mu0), jnp.asarray(NU0), None)
    sde = AdamSME(LOSS, batches, h, rates, eps, batch_size=2, replacement=False)
    grads = _unit_gradients(batches, Y0)
    factor = (4 - 2) / (2 * 3)
    centred = grads - grads.mean(0)
    square = grads.mean(0) ** 2 + factor * (centred**2).mean(0)
    drift = np.concatenate(
        [-mu0 / (np.sqrt(NU0) + eps), rates[0] * (grads.mean(0) - mu0), rates[1] * (square - NU0)]
    )
    got = sde(0.0, y)
    np.testing.assert_allclose(np.concatenate([got.params, got.mu, got.nu]), drift, atol=1e-14)
    columns = np.concatenate([np.zeros_like(grads), rates[0] * grads, rates[1] * grads**2], 1)
    columns -= columns.mean(0)
    _check_noise(sde, y, h * factor * columns.T @ columns / 4)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_moments_two_steps_by_enumeration(nesterov):
    """Two exact steps (the buffer starts at zero) against all 9 equally likely draws."""
    batches, h, beta = _batches(3), 0.3, 0.5
    map_ = (dl.Nesterov if nesterov else dl.HeavyBall)(LOSS, beta)
    zero = MomentumState(jnp.asarray(Y0), jnp.zeros(3))
    two_steps = [
        map_(
            map_(zero, h, jax.tree.map(lambda x: x[i], batches)),
            h,
            jax.tree.map(lambda x: x[j], batches),
        )
        for i, j in itertools.product(range(3), repeat=2)
    ]
    ends = np.array([np.concatenate([s.params, s.momentum]) for s in two_steps])
    exact = momentum_moments(batches, Y0, h, beta, 2, nesterov=nesterov)
    np.testing.assert_allclose(exact.mean, ends.mean(0), atol=1e-14)
    np.testing.assert_allclose(exact.second, ends.T @ ends / len(ends), atol=1e-14)


HS = 2.0 ** -np.arange(4, 10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sme_weak_slopes_from_exact_moments(nesterov):
    """Mean and second moment of theta: MomentumSME (order 1) and the exact minibatch moments."""
    batches, beta, t_end = _batches(), 0.5, 1.0
    errors = {"mean": [], "second moment": []}
    for h in HS:
        discrete = momentum_moments(batches, Y0, h, beta, int(round(t_end / h)), nesterov=nesterov)
        # MomentumSME at h is the SGD SME at h / (1 - beta) in time t / (1 - beta).
        sde = sme_moments(batches, Y0, h / (1 - beta), t_end / (1 - beta))
        errors["mean"].append(np.linalg.norm(discrete.mean[:3] - sde.mean))
        errors["second moment"].append(np.linalg.norm(discrete.second[:3, :3] - sde.second))
    for phi, errs in errors.items():
        fit = WeakOrderEstimate.fit(HS, errs, expected=1, t_end=t_end, test_name=phi)
        print(f"nesterov={nesterov} [{phi}]: slope {fit.slope:.3f}")
        assert fit.used.all() and fit.agrees(0.15), (phi, fit.slope)


def _theta_moments(p):
    return jnp.concatenate([p, jnp.outer(p, p).ravel()])


@pytest.mark.slow
def test_monte_carlo_momentum_weak_error_matches_the_exact_moments():
    batches, h, beta, t_end = _batches(), 0.125, 0.5, 1.0
    step = RandomBatch(dl.HeavyBall(LOSS, beta))
    sde = MomentumSME.of(step, batches, h)
    start = step.step_map.init(jnp.asarray(Y0))
    point = weak_error(step, sde, start, h, t_end, _theta_moments, 4000, jr.key(3))
    discrete = momentum_moments(batches, Y0, h, beta, 8)
    exact_sgd = np.concatenate([discrete.mean[:3], discrete.second[:3, :3].ravel()])
    moments = sme_moments(batches, Y0, h / (1 - beta), t_end / (1 - beta))
    exact_sde = np.concatenate([moments.mean, moments.second.ravel()])
    assert np.linalg.norm(point.sgd_expectation - exact_sgd) <= 4 * point.stderr
    np.testing.assert_allclose(np.linalg.norm(point.component_stderrs), point.stderr, rtol=1e-12)
    assert (
        np.linalg.norm(point.sde_expectation - exact_sde) <= 4 * point.stderr + point.solver_error
    )
    assert abs(point.error - np.linalg.norm(exact_sgd - exact_sde)) <= (
        4 * point.stderr + point.solver_error
    )


def test_bad_inputs_raise_one_clear_line():
    batches, h = _batches(), 0.1
    y = RMSPropState(jnp.asarray(Y0), jnp.asarray(NU0))
    step = RandomBatch(dl.RMSProp(LOSS, rho=0.9, eps=0.1))
    sde = RMSPropSME(LOSS, batches, h, 0.5, 0.1)  # assumes rho = 1 - 0.05
    with pytest.raises(dl.InputError, match="different scalings: the map has rho=0.9"):
        weak_error(step, sde, y, h, 1.0, lambda s: s.params, 10, jr.key(0))
    fixed = RandomBatch(dl.RMSProp(LOSS, rho=1 - 0.5 * 0.4, eps=0.1))  # right at h = 0.4 only
    with pytest.raises(dl.InputError, match="different scalings: the map has rho=0.8"):
        weak_order_of_accuracy(
            fixed,
            lambda h: RMSPropSME(LOSS, batches, h, 0.5, 0.1),
            y,
            [0.1, 0.2, 0.4],
            0.4,
            lambda s: s.params,
            10,
            jr.key(0),
        )
    with pytest.raises(dl.InputError, match="RMSPropSME models RandomBatch\\(RMSProp"):
        sde.check_step(RandomBatch(dl.HeavyBall(LOSS, 0.5)))
    with pytest.raises(dl.InputError, match="different scalings: the map has beta=0.5"):
        MomentumSME(LOSS, batches, h, 0.9).check_step(RandomBatch(dl.HeavyBall(LOSS, 0.5)))
    adam = RandomBatch(dl.Adam(LOSS, b1=1 - 0.5 * h, b2=1 - 0.2 * h, eps=0.1))
    with pytest.raises(dl.InputError, match="bias_correction=False"):
        AdamSME.of(adam, batches, h).check_step(adam)
    with pytest.raises(dl.InputError, match="`batch_size` 5 exceeds the 4 units"):
        RandomBatch(dl.HeavyBall(LOSS, 0.5), 5, replacement=False)(
            RandomBatch(dl.HeavyBall(LOSS, 0.5)).init(jnp.asarray(Y0), key=jr.key(0)), h, batches
        )
    with pytest.raises(dl.InputError, match="`batch_size` 5 exceeds the 4 units"):
        MomentumSME(LOSS, batches, h, 0.5, batch_size=5, replacement=False)
    with pytest.raises(dl.InputError, match="`order=2` needs one unit per step"):
        RMSPropSME(LOSS, batches, h, 0.5, order=2, batch_size=2)
    with pytest.raises(dl.InputError, match="`test_fn` is not finite"):
        good = RandomBatch(dl.RMSProp(LOSS, rho=1 - 0.5 * h, eps=0.1))
        weak_error(good, sde, y, h, 1.0, lambda s: jnp.log(s.params), 10, jr.key(0))
    with pytest.raises(dl.InputError, match="`step_map` must be a deterministic"):
        RandomBatch(RandomBatchSGD(LOSS))


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_rmsprop_sme_without_noise_has_ode_slopes_one_and_two():
    """Identical batches (Sigma = 0): the SDEs are ODEs, RMSProp at 1 - rho = h is deterministic."""
    raw = dl.problems.quadratic_batches(3, 2, linear_terms=True, seed=3)[1]
    batches = {k: jnp.broadcast_to(v.mean(0), v.shape) for k, v in raw.items()}
    start = RMSPropState(jnp.asarray(Y0), jnp.asarray(NU0))
    hs = np.array([1 / 16, 1 / 32, 1 / 64])
    for order in (1, 2):
        errors = []
        for h in hs:
            step = dl.RMSProp(LOSS, rho=1 - h, eps=1.0)
            end = dl.iterate(
                step, start, h, int(round(1 / h)), jax.tree.map(lambda x: x[0], batches)
            )
            sde = RMSPropSME(LOSS, batches, h, 1.0, 1.0, order=order)
            flow_end = dl.solve(sde, start, 1.0)
            errors.append(
                np.linalg.norm(
                    np.concatenate([end.params[-1] - flow_end.params, end.nu[-1] - flow_end.nu])
                )
            )
        fit = WeakOrderEstimate.fit(hs, errors, expected=order, t_end=1.0)
        assert fit.used.all() and fit.agrees(0.15), (order, fit.slope)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_weak_error_runs_the_optimiser_state_through_observe():
    """Identical batches: every minibatch path is deterministic RMSProp / heavy-ball, exactly."""
    raw = dl.problems.quadratic_batches(3, 2, linear_terms=True, seed=3)[1]
    batches = {k: jnp.broadcast_to(v.mean(0), v.shape) for k, v in raw.items()}
    one = jax.tree.map(lambda x: x[0], batches)
    h = 0.25
    rmsprop = dl.RMSProp(LOSS, rho=1 - h, eps=1.0)
    start = RMSPropState(jnp.asarray(Y0), jnp.asarray(NU0))
    sde = RMSPropSME(LOSS, batches, h, 1.0, 1.0)
    point = weak_error(
        RandomBatch(rmsprop), sde, start, h, 1.0, lambda s: jnp.append(s.params, s.nu), 2,
        jr.key(0),
    )  # fmt: skip
    end = dl.iterate(rmsprop, start, h, 4, one)
    np.testing.assert_allclose(
        point.sgd_expectation, np.append(end.params[-1], end.nu[-1]), atol=1e-14
    )
    assert point.stderr < 1e-14  # no noise: zero up to rounding
    momentum = dl.HeavyBall(LOSS, 0.5)
    point = weak_error(
        RandomBatch(momentum), MomentumSME(LOSS, batches, h, 0.5),
        momentum.init(jnp.asarray(Y0)), h, 1.0, lambda p: p, 2, jr.key(0),
    )  # fmt: skip
    end = dl.iterate(momentum, momentum.init(jnp.asarray(Y0)), h, 4, one)
    np.testing.assert_allclose(point.sgd_expectation, end.params[-1], atol=1e-14)
