"""The flow sweep's theory: the quadratic's closed-form global errors, Adam's own step scale,
and the expectation each pairing gets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import driftlab as dl
from driftlab.suites import flow_error
from driftlab.suites.flow_error import _cases as _flow_cases


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


# --- the principal flow's guard: eigenvalues of the Hessian meeting 1/h along GD's path ----


def _quartic_loss(params, data):
    # Hessian diag(c a^2, lam): its first eigenvalue moves with a, the second is fixed.
    return data["c"] * params["a"] ** 4 / 12 + 0.5 * data["lam"] * params["b"] ** 2


def _quartic_samples(a0, b0, c, lam, h, num_steps):
    # GD's exact iterates and step midpoints, and the Hessian's h * lambda at each.
    a, b = [a0], [b0]
    for _ in range(num_steps):
        a.append(a[-1] - h * c * a[-1] ** 3 / 3)
        b.append(b[-1] * (1 - h * lam))
    a, b = np.array(a), np.array(b)
    points = np.empty(2 * num_steps + 1)
    points[0::2], points[1::2] = a, 0.5 * (a[1:] + a[:-1])
    scaled = np.stack([h * c * points**2, np.full_like(points, h * lam)], axis=1)
    return scaled, np.hypot(a[-1] - a0, b[-1] - b0)


@pytest.mark.parametrize("a0", [2.5, 2.0])
def test_path_spectrum_finds_an_eigenvalue_crossing_one_over_h(a0):
    # GD shrinks a, so h c a^2 falls through 1 from h c a0^2 = 1.25 (a0 = 2.5: a crossing)
    # and stays below 1 from 0.8 (a0 = 2); h lam = 0.4 stays put.
    data = {"c": 1.0, "lam": 2.0}
    params = {"a": jnp.asarray(a0), "b": jnp.asarray(1.0)}
    h, num_steps = 0.2, 40
    step = dl.GradientDescent(_quartic_loss)
    spectrum = flow_error.path_spectrum(_quartic_loss, step, params, h, num_steps, data)
    scaled, displacement = _quartic_samples(a0, 1.0, 1.0, 2.0, h, num_steps)
    gaps = np.abs(1 - scaled)
    assert spectrum["num_samples"] == 2 * num_steps + 1
    assert spectrum["min_gap"] == pytest.approx(gaps.min(), rel=1e-9)
    assert spectrum["nearest_h_lambda"] == pytest.approx(scaled.flat[gaps.argmin()], rel=1e-9)
    assert spectrum["gd_displacement"] == pytest.approx(displacement, rel=1e-9)
    above = (scaled > 1).sum(axis=1)
    assert spectrum["above_one"] == sorted(set(above.tolist()))
    crosses = h * a0**2 > 1
    assert (spectrum["crossing"] is not None) == crosses == (len(set(above)) == 2)
    if crosses:
        first = np.flatnonzero(np.diff(above))[0]
        assert f"between steps {first / 2:g} and {(first + 1) / 2:g} of 40" in spectrum["crossing"]
        assert flow_error.DOES_NOT_EXIST in spectrum["crossing"]


def test_path_spectrum_on_a_quadratic_is_its_fixed_spectrum():
    problem = dl.problems.quadratic(dim=4, condition=4.0, lambda_max=3.0)
    step = dl.GradientDescent(problem.loss)
    h, num_steps = 0.4, 5
    spectrum = flow_error.path_spectrum(
        problem.loss, step, problem.params, h, num_steps, problem.data
    )
    eigenvalues = h * np.linalg.eigvalsh(np.asarray(problem.A))
    assert spectrum["min_gap"] == pytest.approx(np.min(np.abs(1 - eigenvalues)), abs=1e-12)
    assert spectrum["crossing"] is None and spectrum["above_one"] == [1]
    assert spectrum["resolution"] < 1e-12
    a, y0 = np.asarray(problem.A), np.asarray(problem.params)
    moved = np.linalg.matrix_power(np.eye(4) - h * a, num_steps) @ y0 - y0
    assert spectrum["gd_displacement"] == pytest.approx(np.linalg.norm(moved), rel=1e-12)


def test_a_start_is_gd_iterate_then_a_kick_along_the_top_eigenvector():
    problem = dl.problems.quadratic(dim=4, condition=4.0)
    start = _flow_cases.Start(warm_up_step=0.5, warm_up_steps=7, kick=0.1)
    moved = _flow_cases.started(problem, start)
    a, y0 = np.asarray(problem.A), np.asarray(problem.params)
    h = 0.5 / np.linalg.eigvalsh(a)[-1]
    warm = np.linalg.matrix_power(np.eye(4) - h * a, 7) @ y0
    top = np.linalg.eigh(a)[1][:, -1]
    top *= np.sign(top[np.argmax(np.abs(top))])
    expected = warm + 0.1 * np.linalg.norm(warm) * top
    np.testing.assert_allclose(np.asarray(moved.params), expected, rtol=1e-12, atol=1e-14)
    assert _flow_cases.started(problem, None) is problem
