"""benchmarks/adaptive_eos.py: the preconditioned sharpness it records, against dense algebra."""

import jax
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import driftlab as dl
from benchmarks import adaptive_eos


H, EVERY, NUM_STEPS = 0.01, 2, 2


@pytest.fixture(scope="module")
def problem():
    # 64-3-10 tanh network on 32 digits: 235 parameters, a dense Hessian in milliseconds.
    return dl.problems.fc_digits(width=3, depth=1, num_samples=32)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("name, b1", [("rmsprop", 0.0), ("adam", 0.9)])
def test_recorded_preconditioned_sharpness_matches_the_dense_generalised_problem(problem, name, b1):
    record = adaptive_eos.adaptive_run(problem, name, H, NUM_STEPS, EVERY, b1=0.9, b2=0.99)
    assert record["steps"] == [0, 2]
    # The thresholds written out: 2/h for RMSProp, (2 + 2 b1) / ((1 - b1) h) = 38/h for Adam.
    assert record["threshold"] == pytest.approx(2 / H if name == "rmsprop" else 38 / H, rel=1e-12)
    assert record["threshold"] == dl.analysis.preconditioned_stability_threshold(H, b1)

    # Independently: the optimiser's own next step holds the second moment it divides by.
    optimiser = adaptive_eos.make_optimiser(name, problem.loss, b1=0.9, b2=0.99, eps=1e-8)
    states = dl.iterate(optimiser, optimiser.init(problem.params), H, EVERY + 1, problem.data)
    at, after = (jtu.tree_map(lambda x, i=i: x[i], states) for i in (EVERY, EVERY + 1))
    nu = ravel_pytree(after.nu)[0]
    if name == "adam":
        nu = nu / (1 - 0.99**after.count)
    preconditioner = np.sqrt(np.asarray(nu)) + 1e-8

    flat, unravel = ravel_pytree(at.params)
    hessian = np.asarray(jax.hessian(lambda z: problem.loss(unravel(z), problem.data))(flat))
    expected = scipy.linalg.eigh(hessian, np.diag(preconditioner), eigvals_only=True)[-1]
    np.testing.assert_allclose(record["preconditioned_sharpness"][1], expected, rtol=1e-8)
    np.testing.assert_allclose(record["lambda_max"][1], np.linalg.eigvalsh(hessian)[-1], rtol=1e-8)
    assert record["loss"][1] == pytest.approx(float(problem.loss(at.params, problem.data)))


def test_verdict_counts_the_checkpoints_at_the_threshold():
    record = {
        "threshold": 10.0,
        "steps": [0, 10, 20, 30, 40],
        "preconditioned_sharpness": [2.0, 9.5, 10.8, 12.0, 10.2],
        "lambda_max": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
    result = adaptive_eos.verdict(record)
    assert result["reaches"] and result["first_step"] == 10
    assert (result["hovering"], result["after"]) == (3, 4)
    assert result["lambda_max_growth"] == pytest.approx(2.5)
    assert not result["starts_above"]
    assert not adaptive_eos.verdict({**record, "preconditioned_sharpness": [1.0] * 5})["reaches"]
    # Coming down from above: the band is entered at step 20, not at the start.
    above = adaptive_eos.verdict({**record, "preconditioned_sharpness": [25, 12, 10.5, 9.2, 7]})
    assert above["starts_above"] and above["first_step"] == 20
    assert (above["hovering"], above["after"]) == (2, 3)


def test_unknown_optimiser_is_an_input_error(problem):
    with pytest.raises(dl.InputError, match="rmsprop"):
        adaptive_eos.make_optimiser("sgd", problem.loss, b1=0.9, b2=0.99, eps=1e-8)
