"""Adam from step 0: the fixed-b boundary layer, and the ODE scaling 1 - b = c h (`AdamODE`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftlab as dl
import driftlab.testing as dlt

from . import helpers


B1, B2, EPS = 0.5, 0.7, 1e-2


def _problem():
    problem = helpers.small_quadratic(3)
    return problem, dict(problem.data, b=jnp.array([0.3, -0.2, 0.5]))


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("bias_correction", [False, True])
def test_boundary_layer_on_a_linear_loss_is_the_direct_computation(bias_correction):
    r"""$L = c\cdot\theta$: the slow manifold is $m = c$, $v = c^2$ and the flow
    $\dot\theta = -c/(|c| + \epsilon)$ is exact; from zero moments the $n$-th step is
    $-h\,c\,\hat a_n / (|c|\sqrt{\hat b_n} + \epsilon)$ with $\hat a_n = 1 - b_1^{n+1}$,
    $\hat b_n = 1 - b_2^{n+1}$ uncorrected and $\hat a_n = \hat b_n = 1$ corrected."""
    c = jnp.array([0.8, -0.3])
    adam = dl.Adam(lambda y, _: jnp.dot(c, y), B1, B2, EPS, bias_correction=bias_correction)
    hs, num_steps = [0.04, 0.02, 0.01], 12
    layer = dl.boundary_layer(
        adam,
        lambda h: dl.ModifiedFlow(adam, h, 1),
        adam.init(jnp.array([0.5, 1.0])),
        hs,
        num_steps,
    )
    n = np.arange(num_steps)
    a = np.ones(num_steps) if bias_correction else 1 - B1 ** (n + 1)
    b = np.ones(num_steps) if bias_correction else 1 - B2 ** (n + 1)
    c = np.asarray(c)
    for i, h in enumerate(layer.hs):  # sorted increasing
        steps = -h * c[:, None] * a / (np.abs(c)[:, None] * np.sqrt(b) + EPS)
        flow = -h * c[:, None] / (np.abs(c)[:, None] + EPS)
        expected = np.linalg.norm(steps - flow, axis=0)
        np.testing.assert_allclose(layer.defects[i], expected, rtol=1e-9, atol=1e-13)
    if bias_correction:
        assert layer.defects.max() < 1e-13  # bias correction removes the layer exactly here
    else:
        # The defect is h times a function of the step index: order 1 at every step.
        np.testing.assert_allclose(layer.orders, 1.0, atol=1e-9)
        assert layer.order_from is None


def test_adam_ode_is_optax_adam_with_b_equal_one_minus_c_h():
    """At tau = n h, AdamODE with c_i = (1 - b_i)/h is optax's AdamW, bias correction included."""
    problem, data = _problem()
    h, decay = 0.01, 0.1
    step = dl.AdamODE(problem.loss, (1 - B1) / h, (1 - B2) / h, EPS, weight_decay=decay)
    zeros = jnp.zeros(3)
    ys = dl.iterate(step, step.init((problem.params, zeros, zeros)), h, 30, data)
    optimiser = optax.adamw(h, B1, B2, EPS, weight_decay=decay)
    params, state = problem.params, optimiser.init(problem.params)
    for _ in range(30):
        updates, state = optimiser.update(jax.grad(problem.loss)(params, data), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(ys.params[-1], params, rtol=1e-12, atol=1e-15)


def test_adam_ode_reduces_to_burned_in_adam_at_large_tau():
    """With c_i h = 1 - b_i held fixed, at large tau the map is uncorrected Adam (today's
    flow's map, `driftlab.Adam(bias_correction=False)`) and shares its modified series."""
    problem, data = _problem()
    h = 0.01
    step = dl.AdamODE(problem.loss, (1 - B1) / h, (1 - B2) / h, EPS)
    plain = dl.Adam(problem.loss, B1, B2, EPS, bias_correction=False)
    slow = dl.ModifiedFlow(plain, h, 1).slow_state(problem.params, data)
    y = dl.integrators.AdamODEState(slow.params, slow.mu, slow.nu, 1000.0)
    mine, theirs = step(y, h, data), plain(slow, h, data)
    np.testing.assert_allclose(mine.params, theirs.params, rtol=1e-14)
    np.testing.assert_allclose(mine.nu, theirs.nu, rtol=1e-14)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("order", [0, 1, 2])
def test_adam_ode_flow_has_its_local_order(order):
    """On (theta, m, v) at tau = 0.5, the flow of the ODE-scaled map is order p."""
    problem, data = _problem()
    step = dl.AdamODE(problem.loss, 10.0, 1.0, EPS, schedule=dl.ExponentialSchedule(-0.5))
    y0 = dl.integrators.AdamODEState(
        problem.params, 0.1 * problem.params, 0.2 + 0 * problem.params, 0.5
    )
    dlt.assert_order(
        step,
        lambda h: dl.ModifiedFlow(step, h, order),
        y0,
        args=data,
        hs=[0.04, 0.02, 0.01, 0.005],
    )


def test_adam_ode_bad_rates_are_one_line_errors():
    problem, _ = _problem()
    with pytest.raises(dl.InputError, match=r"`c1` must be a positive rate"):
        dl.AdamODE(problem.loss, 0.0, 1.0)
