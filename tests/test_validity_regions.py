"""Flows of stateful maps know where their slow manifold exists, measured on the map."""

import warnings

import numpy as np
import optax
import pytest

import driftlab as dl
from driftlab.integrators._validity import measure_region

from . import helpers


BETA = 0.5


def _quadratic():
    problem = helpers.small_quadratic(4)  # eigenvalues 0.2 .. 1 (lambda_max = 1)
    assert np.isclose(problem.lambda_max, 1.0)
    return problem


def _quiet(call):
    """`call()`, failing on any warning (as the suite's filterwarnings does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_heavy_ball_flow_region_is_the_closed_form():
    quad = _quadratic()
    edge = (1 - np.sqrt(BETA)) ** 2  # the slow root is real while h lambda_max < edge
    inside = dl.HeavyBallFlow(quad.loss, 0.97 * edge, BETA)
    assert inside.outside_region(quad.params, quad.data) is None
    _quiet(lambda: inside(0.0, quad.params, quad.data))
    outside = dl.HeavyBallFlow(quad.loss, 1.03 * edge, BETA)
    assert "no real slow manifold" in outside.outside_region(quad.params, quad.data)
    with pytest.warns(dl.StabilityWarning, match="no real slow manifold") as record:
        outside(0.0, quad.params, quad.data)
    assert record[0].filename == __file__  # the warning points at the caller's line
    # Beyond h lambda = (1 + sqrt(beta))^2 the roots are real again, but negative: still none.
    assert dl.HeavyBallFlow(quad.loss, 3.5, BETA).outside_region(quad.params, quad.data)
    # The case: beta = 0.99, h = 1 (h lambda_max = 1 >> 1e-5 / 4).
    with pytest.warns(dl.StabilityWarning, match="HeavyBall has no real slow manifold"):
        dl.HeavyBallFlow(quad.loss, 1.0, 0.99)(0.0, quad.params, quad.data)


@pytest.mark.parametrize("stepper", ["driftlab", "optax"])
def test_nesterov_region_is_the_closed_form(stepper):
    quad = _quadratic()
    if stepper == "driftlab":
        step = dl.Nesterov(quad.loss, BETA)
    else:
        step = dl.OptaxStepMap(quad.loss, lambda h: optax.sgd(h, momentum=BETA, nesterov=True))
    edge = ((1 - BETA) / (1 + BETA)) ** 2
    assert dl.ModifiedFlow(step, 0.97 * edge, 1).outside_region(quad.params, quad.data) is None
    flow = dl.ModifiedFlow(step, 1.03 * edge, 1)
    assert "no real slow manifold" in flow.outside_region(quad.params, quad.data)
    with pytest.warns(dl.StabilityWarning, match="no real slow manifold") as record:
        flow.coefficients(quad.params, quad.data)
    assert record[0].filename == __file__


def test_optax_nesterov_far_outside_its_region():
    # The case: beta = 0.9 at h lambda_max = 0.04 (edge 0.0028): every direction's
    # roots are complex, and the eigenvalue moduli of different directions still differ.
    quad = _quadratic()
    step = dl.OptaxStepMap(quad.loss, lambda h: optax.sgd(h, momentum=0.9, nesterov=True))
    problem = dl.ModifiedFlow(step, 0.04, 1).outside_region(quad.params, quad.data)
    assert "OptaxStepMap has no real slow manifold at h = 0.04" in problem


def test_krylov_region_of_a_large_state():
    quad = dl.problems.quadratic(200, condition=5.0, lambda_max=1.0, seed=0)
    step = dl.HeavyBall(quad.loss, BETA)
    edge = (1 - np.sqrt(BETA)) ** 2
    for factor, exists in [(0.95, True), (1.05, False), (2.0, False)]:
        h = factor * edge
        state = dl.HeavyBallFlow(quad.loss, h, BETA).slow_state(quad.params, quad.data)
        region = measure_region(step, state, h, quad.data)
        assert region.method == "krylov" and region.exists == exists, (factor, region)


def test_adaptive_flows_near_a_minimum():
    # Near a minimum the preconditioned curvature lambda / P(g^2) is large (P ~ 0.1 for
    # RMSProp's sqrt(g^2 + eps), ~0.01 for Adam's |g| + eps): both leave their region at
    # step sizes below 1 / lambda_max.
    quad = _quadratic()
    params = 1e-3 * quad.params
    for make in (
        lambda h: dl.RMSPropFlow(quad.loss, h, rho=0.5, eps=1e-2),
        lambda h: dl.AdamFlow(quad.loss, h, b1=0.5, b2=0.7, eps=1e-2),
    ):
        assert make(1e-4).outside_region(params, quad.data) is None
        with pytest.warns(dl.StabilityWarning, match="no real slow manifold"):
            make(0.3)(0.0, params, quad.data)


def test_measurements_refuse_points_outside_the_region():
    quad = _quadratic()
    step = dl.HeavyBall(quad.loss, BETA)
    y0 = step.init(quad.params)
    edge = (1 - np.sqrt(BETA)) ** 2
    make_flow = lambda h: dl.HeavyBallFlow(quad.loss, h, BETA)
    with pytest.raises(dl.MeasurementError, match="no real slow manifold"):
        dl.local_error(step, make_flow(1.5 * edge), y0, 1.5 * edge, quad.data)
    with pytest.raises(dl.MeasurementError, match="no real slow manifold"):
        dl.global_error(step, make_flow(1.5 * edge), y0, 1.5 * edge, 1.0, quad.data)
    hs = edge * np.array([0.1, 0.2, 0.4, 0.8, 1.5, 3.0])
    with pytest.warns(dl.StabilityWarning, match="2 of 6 points lie outside") as record:
        estimate = dl.order_of_accuracy(step, make_flow, y0, hs, "local", quad.data)
    assert record[0].filename == __file__
    assert list(estimate.used) == [True] * 4 + [False] * 2
    assert all("no real slow manifold" in line for line in estimate.excluded)
    assert np.all(np.isnan(estimate.errors[4:])) and estimate.agrees(0.3)
    with pytest.raises(dl.MeasurementError, match="too few are left"):
        dl.order_of_accuracy(step, make_flow, y0, hs[3:] * 2, "local", quad.data)


@pytest.mark.parametrize("size", [4, 300])  # dense Jacobian, Krylov products
def test_repeated_measurements_reuse_their_compilation(size):
    # `outside_region` runs before every measurement of a sweep: a fresh closure in the
    # jitted Jacobian's static arguments would recompile the map at each call.
    quad = dl.problems.quadratic(size, condition=5.0, lambda_max=1.0, seed=0)
    traces = []

    def loss(params, data):
        traces.append(None)
        return quad.loss(params, data)

    step = dl.HeavyBall(loss, BETA)
    state = step.init(quad.params)
    first = measure_region(step, state, 0.01, quad.data)
    num_traces = len(traces)
    second = measure_region(step, state, 0.02, quad.data)
    assert len(traces) == num_traces and num_traces > 0
    assert first.exists and second.exists


def _adam_on_quadratic(b2):
    """Adam (optax, eps = 0) on the small quadratic, its flow's slow state at orders 0 and 1."""
    quad = _quadratic()
    step = dl.OptaxStepMap(quad.loss, lambda h: optax.adam(h, b1=0.5, b2=b2, eps=0.0))
    return quad, step


def test_adam_slow_state_series_needs_h_small_against_one_minus_b2():
    # The case: optax.adam(h) with b2 = 0.999 gave an order-0 slope of 1.40 with no
    # flag, and at order 1 a NaN slow state blamed on the stability edge. The slow state's
    # second moment is nu = g^2 + h nu_1 with nu_1 = b2 / (1 - b2) * d(g^2)/dt (exact to
    # first order, e.g. Ghosh et al. 2023), so its expansion needs h |d log g_i^2 / dt| to be
    # small against 1 - b2; where h nu_1 outweighs g^2 the slow state has nu < 0.
    from driftlab.integrators._validity import SERIES_LIMIT

    quad, step = _adam_on_quadratic(0.999)
    g = np.asarray(quad.A @ quad.params)
    # Along the order-0 flow theta' = -mu / sqrt(nu) = -sign(g): d(g^2)/dt = -2 g A sign(g).
    rate = -2 * g * (np.asarray(quad.A) @ np.sign(g))
    ratio_per_h = np.abs(0.999 / (1 - 0.999) * rate) / g**2
    edge = SERIES_LIMIT / ratio_per_h.max()  # the h where the first correction = a_0
    for order in (0, 1):
        inside = dl.ModifiedFlow(step, 0.5 * edge, order)
        assert inside.outside_region(quad.params, quad.data) is None
        problem = dl.ModifiedFlow(step, 2 * edge, order).outside_region(quad.params, quad.data)
        assert problem is not None and "not small against the decay rates" in problem
        holds = float(problem.split("holds below about h = ")[1].split(" ")[0])
        assert np.isclose(holds, edge, rtol=2e-3), (holds, edge)
    # Far outside: said so, not blamed on the stability edge.
    flow = dl.ModifiedFlow(step, 40 * edge, 1)
    y0 = step.init(quad.params, quad.data)
    with pytest.raises(dl.MeasurementError, match="no valid expansion") as info:
        dl.local_error(step, flow, y0, 40 * edge, quad.data)
    assert "stability edge" not in str(info.value)
    # With b2 far from 1 the same h is inside.
    _, loose = _adam_on_quadratic(0.5)
    assert dl.ModifiedFlow(loose, 2 * edge, 1).outside_region(quad.params, quad.data) is None
