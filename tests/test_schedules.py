"""Learning-rate schedules in continuous time: `Scheduled` maps and their modified flows."""

import math
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sympy as sp

import driftlab as dl
import driftlab.testing as dlt

from . import helpers


SMOOTH = dl.FunctionSchedule(lambda t: 1 + 0.8 * t + 0.3 * jnp.sin(t))
SMOOTH_SYMBOLIC = lambda t: 1 + sp.Rational(4, 5) * t + sp.Rational(3, 10) * sp.sin(t)


def _symbolic_gd_coefficients(order: int):
    r"""$f_0..f_p$ of scheduled GD in 1-D by matching the flow's Lie series to the map.

    The field $F = \sum_k h^k f_k(\tau, \theta)$ of $(\theta, \tau)$ with $\dot\tau = 1$
    has the time-$h$ flow $\sum_j h^j/j!\, D^{j-1} F$, $D = \partial_\tau + F\partial_\theta$;
    matching $\theta - h\sigma(\tau) g(\theta)$ power by power gives each $f_k$.
    """
    tau, theta, h = sp.symbols("tau theta h")
    sigma, g = sp.Function("sigma")(tau), sp.Function("g")(theta)
    unknowns = [sp.Function(f"f{k}")(tau, theta) for k in range(order + 1)]
    field = sum(h**k * f for k, f in enumerate(unknowns))
    term, flow = field, theta
    for j in range(1, order + 2):
        flow += h**j / sp.factorial(j) * term
        term = sp.diff(term, tau) + field * sp.diff(term, theta)
    mismatch = sp.expand(flow - (theta - h * sigma * g))
    solved = {}
    for k, unknown in enumerate(unknowns):
        equation = mismatch.coeff(h, k + 1).subs(solved).doit()
        solved[unknown] = sp.expand(sp.solve(equation, unknown)[0].doit())
    return [solved[f] for f in unknowns], (tau, theta, sigma, g)


def test_gd_schedule_f1_f2_match_sympy():
    r"""$f_1 = -\frac12(\sigma^2 H g - \sigma' g)$ and
    $f_2 = -\frac1{12}[\sigma^3(T[g,g] + 4H^2 g) - 6\sigma\sigma' H g + \sigma'' g]$."""
    (f0, f1, f2), (tau, theta, sigma, g) = _symbolic_gd_coefficients(2)
    s, ds, d2s = sp.symbols("s ds d2s")
    g0, g1, g2 = sp.symbols("g0 g1 g2")
    # The closed forms stated in the docs, checked against the derivation.
    f1_stated = -(s**2 * g1 * g0 - ds * g0) / 2
    f2_stated = -(s**3 * (g2 * g0**2 + 4 * g1**2 * g0) - 6 * s * ds * g1 * g0 + d2s * g0) / 12

    def concrete(expr):
        expr = expr.subs(sp.Derivative(sigma, (tau, 2)), d2s).subs(sp.Derivative(sigma, tau), ds)
        expr = expr.subs(sp.Derivative(g, (theta, 2)), g2).subs(sp.Derivative(g, theta), g1)
        return sp.expand(expr.subs(sigma, s).subs(g, g0))

    assert sp.simplify(concrete(f0) + s * g0) == 0
    assert sp.simplify(concrete(f1) - f1_stated) == 0
    assert sp.simplify(concrete(f2) - f2_stated) == 0

    # ModifiedFlow on L = theta^4 / 4 + theta^2 / 2 (g = theta^3 + theta) at tau = 0.4.
    step = dl.Scheduled(dl.GradientDescent(lambda y, _: jnp.sum(y**4 / 4 + y**2 / 2)), SMOOTH)
    t0, y = 0.4, 0.9
    tt = sp.Symbol("tt")
    sigma_at = [float(sp.diff(SMOOTH_SYMBOLIC(tt), tt, k).subs(tt, t0)) for k in range(3)]
    values = {s: sigma_at[0], ds: sigma_at[1], d2s: sigma_at[2]}
    values |= {g0: y**3 + y, g1: 3 * y**2 + 1, g2: 6 * y}
    expected = [float(e.subs(values)) for e in (-s * g0, f1_stated, f2_stated)]
    got = dl.ModifiedFlow(step, 0.01, 2).coefficients(jnp.array([y]), None, t=t0)
    np.testing.assert_allclose([float(c[0]) for c in got], expected, rtol=1e-12)


def _bernoulli_series(schedule, lam: float, t0: float, order: int) -> list[float]:
    r"""The exact modified series of $\theta \mapsto (1 - h\sigma(\tau)\lambda)\theta$.

    All steps commute, so the field $b_h(\tau)\theta$ is exact iff
    $\int_\tau^{\tau+h} b_h = \ell_h(\tau) := \log(1 - h\sigma(\tau)\lambda)$ for every
    $\tau$, i.e. $h\,\frac{e^{hD}-1}{hD} b_h = \ell_h$, so
    $b_h = \frac{hD}{e^{hD}-1}\,\ell_h/h = \sum_j \frac{B_j h^j}{j!} D^j (\ell_h/h)$
    (Bernoulli numbers, $B_1 = -\frac12$): the matrix logarithm of the one-step map,
    spread over its step.
    """
    tau, h = sp.symbols("tau h")
    log_rate = sp.series(sp.log(1 - h * schedule(tau) * lam) / h, h, 0, order + 1).removeO()
    field = 0
    for j in range(order + 1):
        bernoulli = sp.Rational(-1, 2) if j == 1 else sp.bernoulli(j)
        field += bernoulli * h**j / sp.factorial(j) * sp.diff(log_rate, tau, j)
    field = sp.expand(field)
    return [float(field.coeff(h, k).subs(tau, t0)) for k in range(order + 1)]


@pytest.mark.parametrize(
    "schedule, symbolic",
    [
        (SMOOTH, SMOOTH_SYMBOLIC),
        (dl.ExponentialSchedule(-0.7, scale=1.5), lambda t: sp.Rational(3, 2) * sp.exp(-0.7 * t)),
        (dl.PolynomialSchedule((0.5, 1.0, -0.2)), lambda t: 0.5 + t - t**2 / 5),
    ],
)
def test_gd_schedule_series_matches_matrix_logarithm(schedule, symbolic):
    """Every coefficient f_0..f_4 on a 3-D quadratic, against the exact series to 1e-10."""
    problem = helpers.small_quadratic(3)
    lams, vectors = np.linalg.eigh(np.asarray(problem.A))
    step = dl.Scheduled(dl.GradientDescent(problem.loss), schedule)
    t0, order = 0.3, 4
    got = dl.ModifiedFlow(step, 0.01, order).coefficients(problem.params, problem.data, t=t0)
    series = np.array([_bernoulli_series(symbolic, float(lam), t0, order) for lam in lams])
    theta = np.asarray(problem.params)
    for k in range(order + 1):
        expected = vectors @ (series[:, k] * (vectors.T @ theta))
        np.testing.assert_allclose(np.asarray(got[k]), expected, rtol=1e-10, atol=1e-12)


def test_scheduled_flow_uses_time_argument():
    """The flow's `t` is tau: f(t) changes with t as the schedule does, and f_0 = -sigma g."""
    problem = helpers.small_quadratic(3)
    step = dl.Scheduled(dl.GradientDescent(problem.loss), SMOOTH)
    flow = dl.ModifiedFlow(step, 0.01, 0)
    g = problem.A @ problem.params
    for t in (0.0, 0.5, 2.0):
        np.testing.assert_allclose(flow(t, problem.params, problem.data), -SMOOTH(t) * g, rtol=1e-12)


def test_order_one_is_the_half_step_earlier_rate():
    """To first order, f_0 + h f_1 = -sigma(tau - h/2) g - (h/2) sigma^2 H g."""
    problem = helpers.small_quadratic(3)
    step = dl.Scheduled(dl.GradientDescent(problem.loss), SMOOTH)
    h, t = 1e-3, 0.7
    g = problem.A @ problem.params
    field = dl.ModifiedFlow(step, h, 1)(t, problem.params, problem.data)
    shifted = -SMOOTH(t - h / 2) * g - h / 2 * SMOOTH(t) ** 2 * problem.A @ g
    assert float(jnp.linalg.norm(field - shifted)) < 10 * h**2


schedules = st.one_of(
    st.tuples(
        st.floats(0.5, 1.5), st.floats(-0.5, 0.5), st.floats(-0.2, 0.2)
    ).map(lambda c: dl.PolynomialSchedule(c)),
    st.tuples(st.floats(-1.0, 1.0), st.floats(0.5, 1.5)).map(
        lambda p: dl.ExponentialSchedule(p[0], scale=p[1])
    ),
)


@pytest.mark.slow
@hypothesis.settings(max_examples=4)
@hypothesis.given(
    problem=dlt.quadratic_problems(dims=(2, 3), condition=(1.0, 5.0), lambda_max=1.0),
    schedule=schedules,
    order=st.integers(0, 2),
    t0=st.floats(0.0, 1.0),
)
def test_random_smooth_schedules_have_their_local_order(problem, schedule, order, t0):
    step = dl.Scheduled(dl.GradientDescent(problem.loss), schedule)
    y0 = dl.ScheduledState(problem.params, t0)
    dlt.assert_order(
        step, lambda h: dl.ModifiedFlow(step, h, order), y0, args=problem.data,
        hs=[0.04, 0.02, 0.01, 0.005], tolerance=0.3,
    )


@pytest.mark.slow
@pytest.mark.parametrize("order", [0, 1, 2])
def test_scheduled_gd_order_on_mlp(order):
    """Local p + 2 and global p + 1 on a small MLP, smooth schedule, from tau = 0.2."""
    problem = helpers.small_mlp()
    step = dl.Scheduled(dl.GradientDescent(problem.loss), SMOOTH)
    y0 = dl.ScheduledState(problem.params, 0.2)
    make_flow = lambda h: dl.ModifiedFlow(step, h, order)
    hs = [0.16, 0.08, 0.04, 0.02]
    dlt.assert_order(step, make_flow, y0, args=problem.data, hs=hs, tolerance=0.3)
    dlt.assert_order(
        step, make_flow, y0, kind="global", args=problem.data, hs=hs, t_end=0.5, tolerance=0.3
    )
