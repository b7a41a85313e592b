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
    # The issue's case: beta = 0.99, h = 1 (h lambda_max = 1 >> 1e-5 / 4).
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
    # The issue's case: beta = 0.9 at h lambda_max = 0.04 (edge 0.0028): every direction's
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


def _adam_series_bound(quad, b1, b2, limit):
    """The h below which Adam's update (eps = 0) is near-linear in its slow state's corrections.

    Closed form on L = y.A y / 2 at order 1: the slow state over theta is mu = g + h mu_1,
    nu = g^2 + h nu_1 with x_1 = -(dx/dt) / (1 - b) for an average x of decay b along the
    order-0 flow theta' = -mu / sqrt(nu) = -sign(g) (burned-in bias correction), so
    mu_1 = -A theta' / (1 - b1) and nu_1 = -2 g A theta' / (1 - b2). The update from
    (mu, nu) = (g + s h mu_1, g^2 + s h nu_1) is -h (g + s b1 h mu_1) / sqrt(g^2 + s b2 h nu_1);
    the expansion holds while its second difference in s stays below `limit` times u(0).
    """
    g = np.asarray(quad.A) @ np.asarray(quad.params)
    g_dot = np.asarray(quad.A) @ -np.sign(g)
    mu_1, nu_1 = -g_dot / (1 - b1), -2 * g * g_dot / (1 - b2)

    def ratio(h):
        with np.errstate(invalid="ignore"):
            u = [-(g + s * b1 * h * mu_1) / np.sqrt(g**2 + s * b2 * h * nu_1) for s in (0, 0.5, 1)]
        rho = np.abs(u[2] - 2 * u[1] + u[0]) / np.maximum(np.abs(u[0]), 1e-3 * np.abs(u[0]).max())
        return np.inf if not np.all(np.isfinite(rho)) else rho.max()

    low, high = 0.0, 1.0
    for _ in range(60):
        low, high = (
            ((low + high) / 2, high) if ratio((low + high) / 2) < limit else (low, (low + high) / 2)
        )
    return low


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_adam_slow_state_series_needs_h_small_against_one_minus_b2():
    # The issue's case: optax.adam(h) with b2 = 0.999 gave an order-0 slope of 1.40 with no
    # flag, and at order 1 a NaN slow state blamed on the stability edge: h must be small
    # against 1 - b2 relative to how fast each squared gradient entry changes.
    from driftlab.integrators._validity import SERIES_LIMIT

    quad, step = _adam_on_quadratic(0.999)
    edge = _adam_series_bound(quad, 0.5, 0.999, SERIES_LIMIT)
    assert 1e-7 < edge < 1e-3  # far below h lambda_max = 1: not the stability edge
    for order in (0, 1):
        inside = dl.ModifiedFlow(step, 0.9 * edge, order)
        assert inside.outside_region(quad.params, quad.data) is None
        problem = dl.ModifiedFlow(step, 1.1 * edge, order).outside_region(quad.params, quad.data)
        assert problem is not None and "not small against the decay rates" in problem
        holds = float(problem.split("holds below about h = ")[1].split(" ")[0])
        assert np.isclose(holds, edge, rtol=2e-3), (holds, edge)
    # Far outside: a measurement refuses with that reason, not the stability edge's.
    flow = dl.ModifiedFlow(step, 40 * edge, 1)
    y0 = step.init(quad.params, quad.data)
    with pytest.raises(dl.MeasurementError, match="no valid expansion") as info:
        dl.local_error(step, flow, y0, 40 * edge, quad.data)
    assert "stability edge" not in str(info.value)
    # With b2 far from 1 the same h is inside; momentum is linear in its state: never flagged.
    _, loose = _adam_on_quadratic(0.5)
    assert dl.ModifiedFlow(loose, 1.1 * edge, 1).outside_region(quad.params, quad.data) is None


@pytest.mark.slow  # ~20 s: the issue's 433-parameter model, two slow states and a Krylov region
def test_adam_defaults_on_the_issues_mlp():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    model = eqx.nn.MLP(8, 1, 16, 2, activation=jax.nn.tanh, key=jr.key(0))
    model = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if eqx.is_array(x) else x, model
    )
    xs = jr.normal(jr.key(1), (64, 8), jnp.float64)
    batch = (xs, jnp.sin(xs.sum(axis=1, keepdims=True)))

    def loss(m, batch):
        return jnp.mean((jax.vmap(m)(batch[0]) - batch[1]) ** 2)

    step = dl.OptaxStepMap(loss, lambda h: optax.adam(h))
    # At order 1 the slow state has nu < 0 (the issue: a NaN blamed on the stability edge,
    # and `outside_region` None); at order 0 the same h is outside the expansion too.
    flow = dl.ModifiedFlow(step, 1e-4, 1)
    problem = flow.outside_region(model, batch)
    assert problem is not None and "not small against the decay rates" in problem
    negative = int(problem.split("its second moment is negative in ")[1].split(" entries")[0])
    state = flow._slow_state(model, batch)
    nu = jax.tree_util.tree_leaves(eqx.filter(state.opt_state[0].nu, eqx.is_array))
    assert negative == sum(int(jnp.sum(leaf < 0)) for leaf in nu) > 0
    assert dl.ModifiedFlow(step, 1e-4, 0).outside_region(model, batch) is not None
