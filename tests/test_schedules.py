"""Learning-rate schedules in continuous time: `Scheduled` maps and their modified flows."""

import json
import pathlib
import re
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
        np.testing.assert_allclose(
            flow(t, problem.params, problem.data), -SMOOTH(t) * g, rtol=1e-12
        )


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
    st.tuples(st.floats(0.5, 1.5), st.floats(-0.5, 0.5), st.floats(-0.2, 0.2)).map(
        lambda c: dl.PolynomialSchedule(c)
    ),
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
        step,
        lambda h: dl.ModifiedFlow(step, h, order),
        y0,
        args=problem.data,
        hs=[0.04, 0.02, 0.01, 0.005],
        tolerance=0.3,
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


# The schedule rows of docs/optax.md: (map, schedule, f_0 at tau as a function of
# (sigma, theta, g)) or the InputError's reason.
B1, B2, EPS, DECAY, BETA = 0.5, 0.7, 1e-2, 0.3, 0.5
# As a user trains with it: peak learning rate 0.01, lengths in steps of that run.
WARMUP_COSINE = optax.warmup_cosine_decay_schedule(0.0, 0.01, 100, 1000)


def _adam_direction(g):
    return g / (jnp.abs(g) + EPS)


SCHEDULE_TABLE = {
    "adamw+warmup_cosine": (
        lambda lr: optax.adamw(lr, B1, B2, EPS, weight_decay=DECAY),
        lambda: dl.OptaxSchedule(WARMUP_COSINE, reference_step=0.01, num_steps=1000),
        lambda s, theta, g: -s * (_adam_direction(g) + DECAY * theta),
    ),
    "sgd+momentum+cosine": (
        lambda lr: optax.sgd(lr, momentum=BETA),
        lambda: dl.OptaxSchedule(optax.cosine_decay_schedule(0.01, 1000), 0.01, 1000),
        lambda s, theta, g: -s * g / (1 - BETA),
    ),
    "adam+exponential_decay": (
        lambda lr: optax.adam(lr, B1, B2, EPS),
        lambda: dl.OptaxSchedule(optax.exponential_decay(0.01, 100, 0.5), 0.01, 1000),
        lambda s, theta, g: -s * _adam_direction(g),
    ),
    "sgd+driftlab_warmup_cosine": (
        lambda lr: optax.sgd(lr),
        lambda: dl.WarmupCosineSchedule(warmup=1.0, horizon=10.0),
        lambda s, theta, g: -s * g,
    ),
    "piecewise_constant": (
        lambda lr: optax.sgd(lr),
        lambda: dl.OptaxSchedule(optax.piecewise_constant_schedule(0.01, {100: 0.1}), 0.01, 1000),
        r"piecewise_constant_schedule jumps",
    ),
    "exponential_decay (staircase)": (
        lambda lr: optax.sgd(lr),
        lambda: dl.OptaxSchedule(
            optax.exponential_decay(0.01, 100, 0.5, staircase=True), 0.01, 1000
        ),
        r"`schedule` jumps at step 100 \(tau = 1\)",
    ),
}


def _schedule_rows() -> dict[str, bool]:
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optax.md"
    rows = re.findall(r"^\| `([^`]+)` \| `[^`]*` \| `[^`]*` \| (yes|no) \|", page.read_text(), re.M)
    return {name: status == "yes" for name, status in rows}


def test_the_docs_schedule_table_is_the_tested_table():
    assert _schedule_rows() == {name: callable(row[2]) for name, row in SCHEDULE_TABLE.items()}


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("name", SCHEDULE_TABLE)
def test_schedule_table_row(name):
    make_optimiser, make_schedule, expected = SCHEDULE_TABLE[name]
    problem = helpers.small_quadratic(4)
    data = dict(problem.data, b=jnp.array([0.3, -0.2, 0.5, 0.4]))
    if not callable(expected):
        with pytest.raises(dl.InputError, match=expected):
            make_schedule()
        return
    schedule = make_schedule()
    step = dl.Scheduled(dl.OptaxStepMap(problem.loss, make_optimiser), schedule)
    t = 3.0  # between the kinks of the warmup rows (1 and 10)
    (f0,) = dl.ModifiedFlow(step, 0.001, 0).coefficients(problem.params, data, t=t)
    g = jax.grad(problem.loss)(problem.params, data)
    assert helpers.relative_error(f0, expected(schedule(t), problem.params, g)) < 1e-12


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_optax_schedule_in_time_reproduces_the_optax_run():
    """At h = reference_step the scheduled map is the optax run, step for step."""
    problem = helpers.small_quadratic(4)
    schedule = dl.OptaxSchedule(WARMUP_COSINE, reference_step=0.01, num_steps=1000)
    assert schedule.kinks == pytest.approx((1.0, 10.0))
    step = dl.Scheduled(dl.OptaxStepMap(problem.loss, lambda lr: optax.adamw(lr)), schedule)
    ys = dl.iterate(step, step.init(problem.params), 0.01, 150, problem.data)
    optimiser = optax.adamw(WARMUP_COSINE)
    params, state = problem.params, optimiser.init(problem.params)
    for _ in range(150):
        grad = jax.grad(problem.loss)(params, problem.data)
        updates, state = optimiser.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    # optax evaluates its cosine at the int32 count in float32: rates agree to ~1e-7.
    np.testing.assert_allclose(ys.state.params[-1], params, rtol=1e-6)
    np.testing.assert_allclose(ys.tau[-1], 1.5, rtol=1e-12)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dl.PolynomialSchedule((1.0, -1.0)), r"sigma\(1\.0\d*\) = -"),
        (lambda: dl.FunctionSchedule(lambda t: jnp.log(t)), r"sigma\(0\) = -inf"),
        (lambda: dl.WarmupCosineSchedule(warmup=2.0, horizon=1.0), "must be later"),
        (lambda: dl.CosineSchedule(horizon=float("nan")), "finite positive time"),
    ],
)
def test_bad_schedules_are_one_line_errors(make, match):
    problem = helpers.small_quadratic(2)
    with pytest.raises(dl.InputError, match=match) as info:
        dl.Scheduled(dl.GradientDescent(problem.loss), make())
    assert "\n" not in str(info.value)


def test_kinks_warn_and_refuse_points_on_them():
    problem = helpers.small_quadratic(2)
    step = dl.Scheduled(dl.GradientDescent(problem.loss), dl.WarmupCosineSchedule(0.5, 2.0))
    flow = dl.ModifiedFlow(step, 0.1, 1)
    with pytest.warns(dl.KinkWarning, match=r"kink at tau = 0\.5"):
        dl.global_error(step, flow, step.init(problem.params), 0.1, 1.0, problem.data)
    with pytest.raises(dl.InputError, match=r"exactly on the schedule's kink at tau = 0\.5"):
        dl.local_error(step, flow, dl.ScheduledState(problem.params, 0.5), 0.1, problem.data)


# The kink falls inside a step for every h of the grid (not on a step boundary).
KINKED = dl.WarmupCosineSchedule(warmup=0.3137, horizon=3.0, init=0.2)
HS = [0.04, 0.02, 0.01, 0.005]


@pytest.mark.slow
@pytest.mark.parametrize("order", [0, 1, 2])
def test_local_order_away_from_kinks_global_order_capped_across(order):
    """Away from the warmup's kink: local p + 2; across it: global min(p + 1, 2), with the
    crossing named once in the estimate's remarks. (Measured: global 1.02, 1.87, 1.83 for
    p = 0, 1, 2; local 2.00, 3.01, 4.01 at tau = 1.)"""
    problem = helpers.small_quadratic(3)
    step = dl.Scheduled(dl.GradientDescent(problem.loss), KINKED)
    make_flow = lambda h: dl.ModifiedFlow(step, h, order)
    away = dl.ScheduledState(problem.params, 1.0)
    dlt.assert_order(step, make_flow, away, args=problem.data, hs=[0.16, 0.08, 0.04, 0.02])
    start = dl.ScheduledState(problem.params, 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate = dl.order_of_accuracy(
            step,
            make_flow,
            start,
            HS,
            "global",
            problem.data,
            t_end=1.0,
            expected=min(order + 1, 2),
        )
    kink_warnings = [w for w in caught if "kink" in str(w.message)]
    assert len(kink_warnings) == 1
    assert any("tau = 0.3137" in remark for remark in estimate.remarks)
    assert estimate.expected == min(order + 1, 2)  # capped by the crossing
    assert estimate.agrees(0.3), str(estimate)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--schedule", "warmup-cosine", "--horizon", "2.0"], "needs `--warmup`"),
        (["--schedule", "cosine"], "needs `--horizon`"),
        (["--warmup", "0.1"], "`--warmup` needs `--schedule`"),
        (
            ["--schedule", "cosine", "--horizon", "1.0", "--flow", "gradient"],
            "only `--flow modified`",
        ),
        (["--schedule", "warmup-cosine", "--warmup", "3", "--horizon", "2"], "must be later"),
    ],
)
def test_cli_schedule_bad_values_are_one_line(argv, match, capsys):
    from driftlab.cli import main

    flow = [] if "--flow" in argv else ["--flow", "modified"]
    assert main(["order", "--problem", "quadratic", *flow, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err


@pytest.mark.slow
def test_cli_order_with_a_schedule(tmp_path, capsys):
    from driftlab.cli import main

    argv = [
        "order",
        "--problem",
        "quadratic",
        "--flow",
        "modified",
        "--schedule",
        "warmup-cosine",
        "--warmup",
        "0.1",
        "--horizon",
        "2.0",
        "--start",
        "0.5",
        "--h-min",
        "0.01",
        "--h-max",
        "0.08",
        "--num",
        "4",
        "--output",
        str(tmp_path),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "order.json").read_text())
    assert result["schedule"] == {"name": "warmup-cosine", "warmup": 0.1, "horizon": 2.0}
    (estimate,) = result["estimates"]
    assert abs(estimate["slope"] - 3) < 0.3  # order 1, local, away from the kink at 0.1
