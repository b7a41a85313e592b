"""Heavy-ball, RMSProp and Adam flows: slow root, ModifiedFlow, orders from the slow manifold."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftlab as dl
from driftlab.flows import ModifiedFlow

from . import helpers
from .literature_helpers import error_ratio, linear_coefficients, tiny_mlp


BETA = 0.5


@pytest.mark.slow
def test_heavy_ball_slow_root_coefficients():
    # The exact slow field on L = y^T A y / 2 is (1/h) log r(hA) y with r the slow root of
    # r^2 - (1 + beta - x) r + beta; with log r(x) = a_1 x + a_2 x^2 + ..., its f_k is
    # a_{k+1} A^{k+1} y. The a_k come from differentiating log r here, not from driftlab.
    b = BETA

    def log_slow_root(x):
        c = 1 + b - x
        return jnp.log(0.5 * (c + jnp.sqrt(c**2 - 4 * b)))

    a, derivative = [], log_slow_root
    for k in range(1, 5):
        derivative = jax.grad(derivative)
        a.append(float(derivative(0.0)) / math.factorial(k))
    assert np.isclose(a[0], -1 / (1 - b), rtol=1e-14)
    assert np.isclose(a[1], -(1 + b) / (2 * (1 - b) ** 3), rtol=1e-14)
    problem = helpers.small_quadratic(4)
    matrix, y = np.asarray(problem.A), np.asarray(problem.params)
    exact = [a[k] * np.linalg.matrix_power(matrix, k + 1) @ y for k in range(4)]
    make_flow = lambda h: dl.HeavyBallFlow(problem.loss, h, BETA)
    for mine, truth in zip(linear_coefficients(make_flow, problem.params, problem.data), exact):
        assert helpers.relative_error(mine, truth) < 1e-13
    # h = 0.02 lies inside the slow manifold's region (h lambda_max < (1 - sqrt(beta))^2);
    # the coefficients themselves do not depend on h.
    automatic = ModifiedFlow(dl.HeavyBall(problem.loss, BETA), 0.02, order=3).coefficients(
        problem.params, problem.data
    )
    for k, (mine, truth) in enumerate(zip(automatic, exact)):
        assert helpers.relative_error(mine, truth) < 1e-12, k  # DESIGN.md: measured 2e-15


def test_heavy_ball_flow_against_exact_slow_field():
    problem = helpers.small_quadratic(4)
    a, y = np.asarray(problem.A), problem.params

    def error(h):
        exact = dl.flows.heavy_ball_slow_field_matrix(a, h, BETA) @ np.asarray(y)
        return np.linalg.norm(
            np.asarray(dl.HeavyBallFlow(problem.loss, h, BETA)(0, y, problem.data)) - exact
        )

    assert 3.7 < error_ratio(error, 1e-2) < 4.3  # O(h^2); measured 4.0
    edge = (1 - np.sqrt(BETA)) ** 2
    with pytest.raises(dl.InputError, match="no real slow manifold"):
        dl.flows.heavy_ball_slow_field_matrix(a, 1.01 * edge / problem.lambda_max, BETA)
    # The modified loss generates the field.
    flow = dl.HeavyBallFlow(problem.loss, 0.05, BETA)
    gradient = jax.grad(flow.modified_loss)(y, problem.data)
    assert helpers.relative_error(-gradient, flow(0.0, y, problem.data)) < 1e-13


def _cases(loss):
    return {
        "heavy-ball": (dl.HeavyBall(loss, BETA), lambda h: dl.HeavyBallFlow(loss, h, BETA)),
        "rmsprop": (
            dl.RMSProp(loss, rho=0.7, eps=0.1),
            lambda h: dl.RMSPropFlow(loss, h, rho=0.7, eps=0.1),
        ),
        "adam": (
            dl.Adam(loss, b1=0.5, b2=0.7, eps=0.1, eps_inside_sqrt=True, bias_correction=False),
            lambda h: dl.AdamFlow(loss, h, b1=0.5, b2=0.7, eps=0.1, eps_inside_sqrt=True),
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heavy-ball", "rmsprop", "adam"])
def test_agrees_with_modified_flow_on_the_slow_manifold(name):
    problem = tiny_mlp()
    step, make_flow = _cases(problem.loss)[name]
    automatic = ModifiedFlow(step, 0.02, order=1)  # inside the region; f_k do not depend on h
    coefficients = automatic.coefficients(problem.params, problem.data)
    mine = linear_coefficients(make_flow, problem.params, problem.data)
    for a, b in zip(mine, coefficients):
        assert helpers.relative_error(a, b) < 1e-10  # measured 1e-15
    # The first-order slow state agrees with ModifiedFlow's to O(h^2).
    h = 0.02  # inside heavy-ball's slow-manifold region (h lambda_max < (1 - sqrt(beta))^2)
    ours = make_flow(h).slow_state(problem.params, problem.data)
    theirs = ModifiedFlow(step, h, order=1).slow_state(problem.params, problem.data)
    assert helpers.relative_error(ours, theirs) < 1e-10


@pytest.mark.slow
def test_eps_outside_sqrt_on_a_quadratic():
    # eps inside the sqrt is checked on the MLP above; eps outside needs gradients away
    # from zero (|g| is not smooth there; the MLP has exactly-zero pixel gradients).
    eps_inside_sqrt = False
    problem = helpers.small_quadratic(4)
    data = dict(problem.data, b=jnp.array([0.3, -0.2, 0.5, 0.4]))
    for step, make_flow in [
        (
            dl.Adam(
                problem.loss,
                b1=0.6,
                b2=0.8,
                eps=1e-3,
                eps_inside_sqrt=eps_inside_sqrt,
                bias_correction=False,
            ),
            lambda h: dl.AdamFlow(problem.loss, h, 0.6, 0.8, 1e-3, eps_inside_sqrt),
        ),
        (
            dl.RMSProp(problem.loss, rho=0.8, eps=1e-3, eps_inside_sqrt=eps_inside_sqrt),
            lambda h: dl.RMSPropFlow(problem.loss, h, 0.8, 1e-3, eps_inside_sqrt),
        ),
    ]:
        coefficients = ModifiedFlow(step, 0.1, order=1).coefficients(problem.params, data)
        mine = linear_coefficients(make_flow, problem.params, data)
        for a, b in zip(mine, coefficients):
            assert helpers.relative_error(a, b) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heavy-ball", "rmsprop", "adam"])
@pytest.mark.parametrize("kind", ["local", "global"])
def test_order_on_mlp_from_the_slow_manifold(name, kind):
    problem = helpers.small_mlp()
    step, make_flow = _cases(problem.loss)[name]
    hs = [0.032, 0.016, 0.008] if name == "heavy-ball" else [0.02, 0.01, 0.005]
    # order_of_accuracy starts the map on each flow's slow manifold (flow.slow_state).
    estimate = dl.order_of_accuracy(
        step, make_flow, step.init(problem.params), hs, kind, problem.data, t_end=0.2
    )
    assert estimate.agrees(0.3), estimate
