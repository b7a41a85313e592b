"""Stochastic modified equations: terms, exact moments on quadratics, weak orders, Monte Carlo."""

import itertools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import driftlab as dl
from driftlab.analysis import sgd_moments, sme_moments, weak_error, WeakOrderEstimate
from driftlab.flows import StochasticModifiedEquation
from driftlab.integrators import RandomBatchSGD


Y0 = np.array([1.0, -0.5, 0.3])


def _batches(num=4):
    return dl.problems.quadratic_batches(3, num, linear_terms=True, seed=1)[1]


def _unit_gradients(loss, params, data, examples):
    unit = (lambda x: x[None]) if examples else (lambda x: x)
    return jax.vmap(lambda u: jax.grad(loss)(params, jax.tree_util.tree_map(unit, u)))(data)


@pytest.mark.parametrize(
    "examples, batch_size, replacement", [(False, 1, True), (True, 3, True), (True, 3, False)]
)
def test_noise_has_covariance_h_c_sigma(examples, batch_size, replacement):
    if examples:
        problem = dl.problems.logistic_digits(num_samples=6)
        loss, data, y = problem.loss, problem.data, problem.params
    else:
        loss, data, y = dl.problems.quadratic_loss, _batches(), jnp.asarray(Y0)
    h = 0.3
    sde = StochasticModifiedEquation(loss, data, h, 1, batch_size, replacement, examples)
    grads = eqx.filter_jit(_unit_gradients)(loss, y, data, examples)
    flat = jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)], 1)
    num = flat.shape[0]
    centred = flat - flat.mean(0)
    sigma = centred.T @ centred / num
    factor = 1 / batch_size if replacement else (num - batch_size) / (batch_size * (num - 1))
    g = eqx.filter_jit(sde.diffusion)(0.0, y)
    g_flat = jnp.concatenate([leaf.reshape(-1, num) for leaf in jax.tree_util.tree_leaves(g)])
    np.testing.assert_allclose(g_flat @ g_flat.T, h * factor * sigma, atol=1e-14)
    dw = jr.normal(jr.key(0), (num,))
    matrix_free = eqx.filter_jit(sde.noise)(0.0, y, None, dw)
    for leaf, expected in zip(jax.tree_util.tree_leaves(matrix_free), jax.tree_util.tree_leaves(g)):
        np.testing.assert_allclose(leaf, expected @ dw, atol=1e-14)


def test_drift_on_quadratic_matches_the_closed_form():
    batches, h = _batches(), 0.2
    a, b = np.asarray(batches["A"]).mean(0), np.asarray(batches["b"]).mean(0)
    gradient = a @ Y0 - b
    sde1 = StochasticModifiedEquation(dl.problems.quadratic_loss, batches, h, order=1)
    sde2 = StochasticModifiedEquation(dl.problems.quadratic_loss, batches, h, order=2)
    np.testing.assert_allclose(sde1(0.0, jnp.asarray(Y0)), -gradient, atol=1e-14)
    np.testing.assert_allclose(
        sde2(0.0, jnp.asarray(Y0)), -gradient - 0.5 * h * a @ gradient, atol=1e-14
    )
    np.testing.assert_allclose(
        sde2(0.0, jnp.asarray(Y0)), -jax.grad(sde2.modified_loss)(jnp.asarray(Y0)), atol=1e-14
    )


@pytest.mark.parametrize("batch_size, replacement", [(1, True), (2, True), (2, False)])
def test_sgd_moments_one_step_by_enumeration(batch_size, replacement):
    """One exact step of `sgd_moments` against every equally likely draw of `RandomBatchSGD`."""
    batches, h = _batches(3), 0.3
    step = RandomBatchSGD(dl.problems.quadratic_loss, batch_size, replacement=replacement)
    draws = (
        itertools.product(range(3), repeat=batch_size)
        if replacement
        else itertools.permutations(range(3), batch_size)
    )
    ends = np.array([Y0 - h * step.gradient(jnp.asarray(Y0), batches, jnp.array(d)) for d in draws])
    exact = sgd_moments(batches, Y0, h, 1, batch_size=batch_size, replacement=replacement)
    np.testing.assert_allclose(exact.mean, ends.mean(0), atol=1e-14)
    np.testing.assert_allclose(exact.second, ends.T @ ends / len(ends), atol=1e-14)


def test_sme_moments_start_with_the_generator_of_the_sde():
    """d/dt at t=0 of the exact moments: the SME's drift, and drift y^T + y drift^T + G G^T."""
    batches, h, eps = _batches(), 0.3, 1e-4
    sde = StochasticModifiedEquation(dl.problems.quadratic_loss, batches, h, order=2)
    y = jnp.asarray(Y0)
    drift, g = np.asarray(sde(0.0, y)), np.asarray(sde.diffusion(0.0, y))
    m1, m2 = (sme_moments(batches, Y0, h, t, order=2) for t in (eps, 2 * eps))
    derivative = lambda f0, f1, f2: (4 * (f1 - f0) - (f2 - f0)) / (2 * eps)
    np.testing.assert_allclose(derivative(Y0, m1.mean, m2.mean), drift, rtol=1e-6)
    expected = np.outer(drift, Y0) + np.outer(Y0, drift) + g @ g.T
    second = derivative(np.outer(Y0, Y0), m1.second, m2.second)
    np.testing.assert_allclose(second, expected, rtol=1e-6, atol=1e-9)


HS = 2.0 ** -np.arange(3, 9)
# (order, noise) -> weak slope for (mean, second moment): gradient flow misses SGD's
# fluctuations at O(h); the IGR drift alone is second order for the mean only.
CASES = {
    "gradient flow": ((1, False), (1, 1)),
    "SME order 1": ((1, True), (1, 1)),
    "SME order 2": ((2, True), (2, 2)),
    "IGR drift, no noise": ((2, False), (2, 1)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "batch_size, replacement, num", [(1, True, 4), (2, False, 5)], ids=["batches", "examples"]
)
def test_weak_slopes_from_exact_moments(name, batch_size, replacement, num):
    (order, noise), expected = CASES[name]
    batches, t_end = _batches(num), 1.0
    errors = {"mean": [], "second moment": []}
    for h in HS:
        sgd = sgd_moments(
            batches, Y0, h, int(round(t_end / h)), batch_size=batch_size, replacement=replacement
        )
        sde = sme_moments(
            batches,
            Y0,
            h,
            t_end,
            order=order,
            noise=noise,
            batch_size=batch_size,
            replacement=replacement,
        )
        errors["mean"].append(np.linalg.norm(sgd.mean - sde.mean))
        errors["second moment"].append(np.linalg.norm(sgd.second - sde.second))
    for (phi, errs), slope in zip(errors.items(), expected):
        fit = WeakOrderEstimate.fit(HS, errs, expected=slope, t_end=t_end, test_name=phi)
        print(f"{name} [{phi}]: slope {fit.slope:.3f}, constant {fit.constant:.3g}")
        assert fit.used.all()
        assert fit.agrees(0.15), (name, phi, fit.slope)


def _moments_of(p):
    return jnp.concatenate([p, jnp.outer(p, p).ravel()])


def _stacked(moments):
    return np.concatenate([moments.mean, moments.second.ravel()])


@pytest.mark.slow
def test_monte_carlo_weak_error_matches_the_exact_moments():
    """phi = (theta, theta theta^T): the drift and the noise scale both show."""
    batches, h, t_end = _batches(), 0.25, 1.0
    step = RandomBatchSGD(dl.problems.quadratic_loss)
    sde = StochasticModifiedEquation.of(step, batches, h, order=2)
    point = weak_error(step, sde, jnp.asarray(Y0), h, t_end, _moments_of, 4000, jr.key(3))
    sgd = _stacked(sgd_moments(batches, Y0, h, 4))
    exact = _stacked(sme_moments(batches, Y0, h, t_end, order=2))
    floor = 3 * point.stderr + point.solver_error
    assert np.linalg.norm(point.sde_expectation - exact) <= floor
    assert np.linalg.norm(point.sgd_expectation - sgd) <= 3 * point.stderr
    assert abs(point.error - np.linalg.norm(sgd - exact)) <= floor
    assert point.solver_error < point.stderr  # the extrapolated solver is not the bottleneck


def test_fit_lists_points_at_the_floor():
    hs = [0.1, 0.2, 0.4, 0.8]
    errors = [1e-4, 4e-2, 8e-2, 1.6e-1]
    fit = WeakOrderEstimate.fit(hs, errors, expected=1, stderrs=[1e-4] * 4)
    assert fit.used.tolist() == [False, True, True, True]
    assert len(fit.excluded) == 1 and "h=0.1" in fit.excluded[0]
    assert fit.agrees(1e-9)
    assert json.loads(fit.to_json())["excluded"] == fit.excluded
    assert "slope 1.000" in str(fit)
    with pytest.raises(dl.MeasurementError, match="clearly above"):
        WeakOrderEstimate.fit(hs, errors, expected=1, stderrs=[1e-2] * 4)


def test_bad_inputs_raise_input_errors():
    batches = _batches()
    loss = dl.problems.quadratic_loss
    with pytest.raises(dl.InputError, match="`order`"):
        StochasticModifiedEquation(loss, batches, 0.1, order=3)
    with pytest.raises(dl.InputError, match="`batch_size`"):
        StochasticModifiedEquation(loss, batches, 0.1, batch_size=5, replacement=False)
    step = RandomBatchSGD(loss)
    sde = StochasticModifiedEquation.of(step, batches, 0.1)
    y0 = jnp.asarray(Y0)
    with pytest.raises(dl.InputError, match="built for h=0.1"):
        weak_error(step, sde, y0, 0.2, 1.0, lambda p: p, 10, jr.key(0))
    with pytest.raises(dl.InputError, match="multiple of `h`"):
        weak_error(step, sde, y0, 0.1, 0.25, lambda p: p, 10, jr.key(0))
    with pytest.raises(dl.InputError, match="RandomBatchSGD"):
        weak_error(dl.SGD(loss), sde, y0, 0.1, 1.0, lambda p: p, 10, jr.key(0))
    with pytest.raises(dl.InputError, match="different sampling models"):
        weak_error(RandomBatchSGD(loss, 2), sde, y0, 0.1, 1.0, lambda p: p, 10, jr.key(0))


def test_random_batch_sgd_runs_under_iterate_and_takes_batch_steps():
    batches, h = _batches(), 0.1
    step = RandomBatchSGD(dl.problems.quadratic_loss)
    path = dl.iterate(step, step.init(jnp.asarray(Y0), key=jr.key(0)), h, 3, batches)
    first = np.asarray(path.params[1])
    candidates = [Y0 - h * (batches["A"][k] @ Y0 - batches["b"][k]) for k in range(4)]
    assert min(np.abs(first - c).max() for c in candidates) < 1e-14
    assert not np.array_equal(path.key[1], path.key[2])  # a fresh key every step
    distinct = RandomBatchSGD(dl.problems.quadratic_loss, 4, replacement=False)
    assert sorted(np.asarray(distinct.draw(jr.key(1), 4)).tolist()) == [0, 1, 2, 3]


def test_cli_weak_is_registered_and_rejects_a_bad_order(tmp_path, capsys):
    from driftlab import cli

    args = cli.build_parser().parse_args(["weak", "--order", "1", "2", "--num-batches", "4"])
    assert args.order == [1, 2] and args.num_batches == 4
    with pytest.raises(SystemExit) as exited:  # argparse: one line on stderr, status 2
        cli.main(["weak", "--order", "3", "--output", str(tmp_path)])
    assert exited.value.code == 2
    assert "argument --order: must be 1 or 2, got '3'" in capsys.readouterr().err
