"""Batch-size scaling rules as a measurement: the rules, exact moments, Adam's square-root rule."""

import json
import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import driftlab as dl
from driftlab.analysis import (
    AbstractScalingRule,
    LinearScalingRule,
    scaling_rule_error,
    sgd_moments,
    SquareRootScalingRule,
)


_, BATCHES = dl.problems.quadratic_batches(2, 8, linear_terms=True, seed=1)
#: The minimiser of the mean loss: started there, the mean stays put and the noise drives
#: the run, the regime both rules are derived in.
MINIMUM = np.linalg.solve(np.mean(BATCHES["A"], axis=0), np.mean(BATCHES["b"], axis=0))
KS = [1, 2, 4, 8]
ADAM = {"learning_rate": 0.01, "b1": 0.98, "b2": 0.995, "eps": 1e-8}


def moments(theta):
    """The first and second moments: on a quadratic their expectations are exact."""
    return jnp.concatenate([theta, jnp.outer(theta, theta).ravel()])


def _exact_difference(h, num_steps, k, replacement):
    reference = sgd_moments(BATCHES, MINIMUM, h, num_steps, replacement=replacement)
    scaled = sgd_moments(
        BATCHES, MINIMUM, k * h, num_steps // k, batch_size=k, replacement=replacement
    )
    return np.concatenate(
        [reference.mean - scaled.mean, (reference.second - scaled.second).ravel()]
    )


class KInsteadOfSquareRoot(AbstractScalingRule):
    """A deliberately wrong rule for Adam: the step grows like k, not sqrt(k)."""

    def apply(self, k, hyperparameters):
        scaled = SquareRootScalingRule().apply(k, hyperparameters)
        return scaled | {"learning_rate": k * hyperparameters["learning_rate"]}


class SquareRootForSGD(AbstractScalingRule):
    """A deliberately wrong rule for SGD: the step grows like sqrt(k), not k."""

    def apply(self, k, hyperparameters):
        return {"learning_rate": math.sqrt(k) * hyperparameters["learning_rate"]}


def _check(optimizer, hyperparameters, rule, num_steps, num_samples, **kwargs):
    return scaling_rule_error(
        optimizer,
        hyperparameters,
        rule,
        dl.problems.quadratic_loss,
        jnp.asarray(MINIMUM),
        BATCHES,
        batch_size=1,
        num_steps=num_steps,
        ks=KS,
        test_fn=moments,
        num_samples=num_samples,
        key=jr.key(0),
        examples=False,
        **kwargs,
    )


def test_rules_scale_the_named_hyperparameters():
    assert LinearScalingRule().apply(4, {"learning_rate": 0.1, "momentum": 0.9}) == {
        "learning_rate": pytest.approx(0.4),
        "momentum": 0.9,
    }
    scaled = SquareRootScalingRule().apply(4, {**ADAM, "eps_root": 0.0})
    assert scaled == pytest.approx(
        {"learning_rate": 0.02, "b1": 0.92, "b2": 0.98, "eps": 5e-9, "eps_root": 0.0}
    )
    rmsprop = SquareRootScalingRule(decays=("decay",)).apply(
        9, {"learning_rate": 1.0, "decay": 0.99, "eps": 0.3}
    )
    assert rmsprop == pytest.approx({"learning_rate": 3.0, "decay": 0.91, "eps": 0.1})
    assert SquareRootScalingRule().apply(1, ADAM) == pytest.approx(ADAM)


@pytest.mark.parametrize("replacement", [True, False])
def test_linear_rule_error_matches_exact_moments(replacement):
    # SGD on quadratic batches: E theta and E theta theta^T are exact (sgd_moments), so the
    # measured difference of the two runs' expectations must agree with the exact one at every
    # k, within 4 standard errors. With replacement the runs share their minibatches (common
    # random numbers) and the error is tiny; without, they are independent.
    h, num_steps = (1 / 256, 256) if replacement else (1 / 64, 64)
    check = _check(
        optax.sgd,
        {"learning_rate": h},
        LinearScalingRule(),
        num_steps,
        2000,
        replacement=replacement,
    )
    assert check.common_random_numbers == replacement
    assert list(check.batch_sizes) == KS and list(check.steps) == [num_steps // k for k in KS]
    for k, difference, stderr in zip(KS, check.differences, check.stderrs):
        exact = _exact_difference(h, num_steps, k, replacement)
        assert np.linalg.norm(difference - exact) <= 4 * stderr + 1e-15, k
    if replacement:
        # Started at the minimum, the rule is exact to first order (both runs' second moments
        # are h Sigma-scaled to O(h^2)): at k = 2 the exact difference lies below 2 standard
        # errors and the check says the rule holds; k = 1 is the same run.
        assert check.errors[0] == 0 and check.holds[0]
        assert np.linalg.norm(_exact_difference(h, num_steps, 2, True)) < 2 * check.stderrs[1]
        assert check.holds[1]
    else:
        # At k = 8 the batch is all 8 units, drawn without replacement: full-batch GD, no
        # noise left, so the linear rule breaks (exactly: the finite-population factor is 0).
        assert check.diverged.sum() == 0 and check.breaks_at == 8


def test_wrong_rule_for_sgd_is_detected_and_matches_exact_moments():
    h, num_steps = 1 / 256, 256
    check = _check(optax.sgd, {"learning_rate": h}, SquareRootForSGD(), num_steps, 2000)
    for k, difference, stderr in zip(KS, check.differences, check.stderrs):
        reference = sgd_moments(BATCHES, MINIMUM, h, num_steps)
        scaled = sgd_moments(BATCHES, MINIMUM, math.sqrt(k) * h, num_steps // k, batch_size=k)
        exact = np.concatenate(
            [reference.mean - scaled.mean, (reference.second - scaled.second).ravel()]
        )
        assert np.linalg.norm(difference - exact) <= 4 * stderr + 1e-15, k
    assert check.breaks_at == 2 and check.safe_up_to == 1
    assert not check.holds[1:].any()


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_square_root_rule_holds_for_adam_and_k_instead_of_sqrt_k_is_detected():
    # Adam at the minimum of the quadratic batches: the gradient noise dominates its second
    # moment, Malladi et al.'s regime. The square-root rule holds (error within 2 standard
    # errors) at k = 2 and 4; the rule with step k h instead of sqrt(k) h does not, at any k.
    square_root = _check(optax.adam, ADAM, SquareRootScalingRule(), 256, 8000)
    assert square_root.holds[:3].all() and square_root.safe_up_to >= 4, str(square_root)
    wrong = _check(optax.adam, ADAM, KInsteadOfSquareRoot(), 256, 8000)
    assert wrong.breaks_at == 2 and not wrong.holds[1:].any(), str(wrong)
    assert (wrong.errors[1:] > 4 * wrong.stderrs[1:]).all()
    assert (wrong.errors[1:] > 5 * square_root.errors[1:]).all()
    # Table, verdict and JSON.
    assert "breaks at k = 2" in wrong.verdict and "safe up to k = 1" in wrong.verdict
    assert "KInsteadOfSquareRoot for adam on moments" in str(wrong)
    record = json.loads(square_root.to_json())
    assert record["ks"] == KS and record["safe_up_to"] == square_root.safe_up_to
    assert record["hyperparameters"][2]["learning_rate"] == pytest.approx(0.02)


def test_divergence_at_large_k_is_a_break_not_an_error():
    # SGD with h lambda_max = 0.9: at k = 8 the step 8 h is far beyond 2 / lambda_max and the
    # run overflows; the check records that as where the rule breaks, not as a failure.
    lam = max(np.linalg.eigvalsh(np.mean(BATCHES["A"], axis=0)))
    check = _check(optax.sgd, {"learning_rate": 0.9 / lam}, LinearScalingRule(), 2048, 8)
    assert list(check.diverged) == [False, False, True, True] and check.holds[:2].all()
    assert check.breaks_at == 4 and "breaks at k = 4 (the run diverges" in check.verdict, str(check)
    assert np.isinf(check.errors[2:]).all() and not check.holds[2:].any()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ks": [1, 0]}, "`k` must be a positive integer"),
        ({"ks": [-2]}, "`k` must be a positive integer"),
        ({"ks": [1.5]}, "`k` must be a positive integer"),
        ({"ks": [16], "num_steps": 16, "replacement": False}, "16 x 1 = 16 exceeds the 8 units"),
        ({"batch_size": 9, "replacement": False, "ks": [1]}, "`batch_size` 9 exceeds the 8 units"),
        ({"test_fn": lambda theta: jnp.log(theta[0] - theta[0])}, "`test_fn` is not finite"),
        ({"num_steps": 6}, "not a multiple of k=4"),
        ({"rule": SquareRootScalingRule(), "ks": [64], "num_steps": 64}, "needs k (1 - b1) <= 1"),
        ({"rule": SquareRootScalingRule(decays=("beta",))}, "lacks"),
        ({"rule": "linear"}, "`rule` must be"),
        ({"num_samples": 1}, "`num_samples` must be"),
        ({"common_random_numbers": True, "replacement": False}, "needs `replacement=True`"),
    ],
)
def test_bad_input_is_one_clear_line(change, message):
    arguments = {
        "optimizer": optax.adam,
        "hyperparameters": ADAM,
        "rule": LinearScalingRule(),
        "loss": dl.problems.quadratic_loss,
        "params": jnp.asarray(MINIMUM),
        "data": BATCHES,
        "batch_size": 1,
        "num_steps": 8,
        "ks": [1, 2, 4],
        "test_fn": moments,
        "num_samples": 4,
        "key": jr.key(0),
        "examples": False,
    } | change
    with pytest.raises(dl.InputError) as info:
        scaling_rule_error(**arguments)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_diverging_original_run_is_a_measurement_error():
    lam = max(np.linalg.eigvalsh(np.mean(BATCHES["A"], axis=0)))
    with pytest.raises(dl.MeasurementError, match="original run .* diverged"):
        _check(optax.sgd, {"learning_rate": 3.0 / lam}, LinearScalingRule(), 2048, 8)
