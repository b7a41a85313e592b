"""The flow sweep's theory: the quadratic's closed-form global errors, Adam's own step scale,
and the expectation each pairing gets."""

import jax
import numpy as np
import pytest
import scipy.linalg

import driftlab as dl
from benchmarks import _flow_cases, flow_error


def _direct(problem, order, h, num_steps):
    # GD's n steps and exp(t F_p) with F_p = -sum_{k<=p+1} h^(k-1) A^k / k, by matrix functions.
    a = np.asarray(problem.A)
    field = -sum(np.linalg.matrix_power(h * a, k) / (k * h) for k in range(1, order + 2))
    gd = np.linalg.matrix_power(np.eye(len(a)) - h * a, num_steps)
    flow = scipy.linalg.expm(num_steps * h * field)
    return np.linalg.norm((gd - flow) @ np.asarray(problem.params))


@pytest.mark.parametrize("h_lambda", [0.05, 0.3, 1.5])
@pytest.mark.parametrize(("name", "order"), [("gradient", 0), ("igr", 1), ("modified-3", 3)])
def test_quadratic_closed_form_matches_matrix_functions(name, order, h_lambda):
    problem = dl.problems.quadratic()
    h = h_lambda / problem.lambda_max
    num_steps = int(round(5 / h))
    closed = flow_error.quadratic_closed_form(problem, name, h, num_steps)
    direct = _direct(problem, order, h, num_steps)
    # The direct difference cancels to about 1e-16 absolute; the series form does not.
    assert abs(closed - direct) <= 1e-9 * direct + 1e-15


def test_quadratic_closed_form_is_the_measured_global_error():
    problem = dl.problems.quadratic()
    step = dl.GradientDescent(problem.loss)
    for h_lambda in (0.05, 1.5):
        h = h_lambda / problem.lambda_max
        flow = dl.IGRFlow(problem.loss, h)
        measured = dl.global_error(step, flow, problem.params, h, 5.0, problem.data)
        closed = flow_error.quadratic_closed_form(problem, "igr", h, measured.num_steps)
        assert abs(measured.error - closed) < 1e-3 * closed
    assert flow_error.quadratic_closed_form(problem, "principal", 0.1, 3) == 0.0
    assert flow_error.quadratic_closed_form(problem, "heavy-ball", 0.1, 3) is None


@pytest.mark.parametrize("eps_inside_sqrt", [False, True])
def test_adam_scale_is_the_preconditioned_curvature(eps_inside_sqrt):
    problem = dl.problems.quadratic()
    step = dl.Adam(problem.loss, eps=1e-2, bias_correction=False, eps_inside_sqrt=eps_inside_sqrt)
    g = np.asarray(jax.grad(problem.loss)(problem.params, problem.data))
    p = np.sqrt(g**2 + 1e-2) if eps_inside_sqrt else np.abs(g) + 1e-2
    a = np.asarray(problem.A) / np.sqrt(np.outer(p, p))
    expected = np.linalg.eigvalsh(a)[-1]
    assert abs(_flow_cases.preconditioned_curvature(problem, step) - expected) < 1e-10 * expected
    h_unit, time_unit = _flow_cases.SCALES["adam"].unit(problem, step, None, problem.data)
    assert np.isclose(h_unit, (1 - 0.999) / expected) and np.isclose(time_unit, 1 / expected)


def test_each_pairing_gets_its_expectation():
    fixed = _flow_cases.expectation("logistic", "sgd-epoch", "sgd", 1)
    averaged = _flow_cases.expectation("logistic", "sgd-epoch-averaged", "sgd", 1)
    assert (fixed.local, fixed.global_) == (2, 1) and (averaged.local, averaged.global_) == (3, 2)
    exact = _flow_cases.expectation("quadratic", "gd", "principal", 1)
    assert exact.local is None and "round-off" in exact.reason
    assert _flow_cases.expectation("mlp", "gd", "modified-4", 4).global_ == 5


def test_a_flow_that_does_not_exist_at_one_point_is_a_gap():
    def record(x, error=None, failure=None):
        result = {"failure": failure} if failure else {"relative_error": error}
        return {"h_lambda": x, "failure": None, "global": result}

    records = [
        record(0.5, 1e-13),
        record(1.0, failure="MeasurementError: PrincipalFlow: ... does not exist there"),
        record(1.5, 1e-13),
        record(2.0, failure="MeasurementError: the solve failed"),
    ]
    assert flow_error.tracking_limit(records) == (1.5, "fails at x=2", [1.0])
    records[2] = record(1.5, 0.5)
    assert flow_error.tracking_limit(records)[:2] == (0.5, "relative error 0.5 at 1.5")
