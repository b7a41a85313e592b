"""optax transformations under `ModifiedFlow`: counters, smoothness checks, the support table."""

import functools as ft
import pathlib
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftlab as dl
from driftlab.integrators._layout import BURNED_IN_COUNT

from . import helpers
from .literature_helpers import linear_coefficients


B1, B2, EPS = 0.5, 0.7, 1e-2  # the flow sweep's resolvable Adam case (eps outside the root here)
WEIGHT_DECAY = 0.3
BETA = 0.5
H = 0.01


def _problem():
    # A shifted right-hand side keeps every gradient entry away from zero: optax puts eps
    # outside the root, and sqrt(nu) = |g| is not smooth at g = 0.
    problem = helpers.small_quadratic(4)
    return problem, dict(problem.data, b=jnp.array([0.3, -0.2, 0.5, 0.4]))


def _adam_direction(g, eps=EPS):
    return g / (jnp.abs(g) + eps)


def _lamb_f0(theta, g):
    u = g / (jnp.abs(g) + 1e-6)  # lamb: adam (eps 1e-6 outside the root), then the trust ratio
    return -u * jnp.linalg.norm(theta) / jnp.linalg.norm(u)


# Supported rows give f_0 on the slow manifold in closed form (the h -> 0 update direction
# with the moments at their fixed point: m = g, v = g^2); the others the InputError's reason.
TABLE: dict[str, tuple[Callable, Callable | str]] = {
    "sgd": (lambda h: optax.sgd(h), lambda theta, g: -g),
    "sgd+momentum": (
        lambda h: optax.sgd(h, momentum=BETA),
        lambda theta, g: -g / (1 - BETA),
    ),
    "sgd+nesterov": (
        lambda h: optax.sgd(h, momentum=BETA, nesterov=True),
        lambda theta, g: -g / (1 - BETA),
    ),
    "adam": (lambda h: optax.adam(h, B1, B2, EPS), lambda theta, g: -_adam_direction(g)),
    "adamw": (
        lambda h: optax.adamw(h, B1, B2, EPS, weight_decay=WEIGHT_DECAY),
        lambda theta, g: -_adam_direction(g) - WEIGHT_DECAY * theta,
    ),
    "nadam": (lambda h: optax.nadam(h, B1, B2, EPS), lambda theta, g: -_adam_direction(g)),
    "radam": (lambda h: optax.radam(h, B1, B2, EPS), lambda theta, g: -_adam_direction(g)),
    "rmsprop": (
        lambda h: optax.rmsprop(h, B2, EPS),
        lambda theta, g: -g / jnp.sqrt(g**2 + EPS),
    ),
    "rmsprop+bias_correction": (
        lambda h: optax.rmsprop(h, B2, EPS, bias_correction=True),
        lambda theta, g: -g / jnp.sqrt(g**2 + EPS),
    ),
    "adabelief": (
        lambda h: optax.adabelief(h, B1, B2, EPS, eps_root=1e-4),
        lambda theta, g: -g / (jnp.sqrt(1e-4 / (1 - B2)) + EPS),
    ),
    "lamb": (lambda h: optax.lamb(h, B1, B2), _lamb_f0),
    "adam+constant_schedule": (
        lambda h: optax.adam(optax.constant_schedule(h), B1, B2, EPS),
        lambda theta, g: -_adam_direction(g),
    ),
    "clip_by_global_norm (inactive)": (
        lambda h: optax.chain(optax.clip_by_global_norm(100.0), optax.sgd(h)),
        lambda theta, g: -g,
    ),
    "clip_by_global_norm (active)": (
        lambda h: optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(h)),
        r"switch .*active clip.*clip_by_global_norm",
    ),
    "lion": (lambda h: optax.lion(h), r"applies `sign`.*scale_by_lion"),
    "sign_sgd": (
        lambda h: optax.chain(optax.scale_by_sign(), optax.scale(-h)),
        r"applies `sign`.*scale_by_sign",
    ),
    "adamax": (lambda h: optax.adamax(h, B1, B2), r"applies `abs`"),
    "amsgrad": (lambda h: optax.amsgrad(h, B1, B2), r"applies `max` to two data values"),
    "yogi": (lambda h: optax.yogi(h, B1, B2), r"applies `sign`.*scale_by_yogi"),
    "adagrad": (lambda h: optax.adagrad(h), r"no slow manifold.*sum_of_squares"),
    "sm3": (lambda h: optax.sm3(h), r"no slow manifold"),
    "adam+cosine_decay_schedule": (
        lambda h: optax.adam(optax.cosine_decay_schedule(h, 100)),
        r"time-dependent step.*cosine_decay_schedule",
    ),
    "adam+exponential_decay": (
        lambda h: optax.adam(optax.exponential_decay(h, 10, 0.5)),
        r"time-dependent step.*exponential_decay",
    ),
    "novograd": (lambda h: optax.novograd(h), r"time-dependent step"),
    "adamw+warmup_cosine_decay_schedule (lengths in steps)": (
        lambda h: optax.adamw(optax.warmup_cosine_decay_schedule(0.0, h, 100, 1000)),
        r"tests `h` or the state in Python.*OptaxSchedule",
    ),
    "sgd+linear_schedule (lengths in steps)": (
        lambda h: optax.sgd(optax.linear_schedule(0.0, h, 100)),
        r"time-dependent step.*Scheduled",
    ),
}


#: Rows whose slow-manifold region ends below `H` on `_problem()`: adabelief's belief term
#: tends to eps_root / (1 - b2) on the slow manifold, so its preconditioner multiplies the
#: curvature by about 1 / (sqrt(1e-4 / 0.3) + eps) = 35, and its region (like momentum's,
#: h lambda_P < (1 - sqrt(b1))^2 = 0.086) ends near h = 2.5e-3.
ROW_H = {"adabelief": 1e-3}


@ft.cache
def _coefficients(name: str):
    """Order-1 coefficients of a table row on `_problem()` (they do not depend on `h`)."""
    problem, data = _problem()
    step = dl.OptaxStepMap(problem.loss, TABLE[name][0])
    return dl.ModifiedFlow(step, ROW_H.get(name, H), 1).coefficients(problem.params, data)


def _documented_rows() -> dict[str, bool]:
    """The rows of the support table in docs/optax.md: name -> supported."""
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optax.md"
    cell = r"(?:[^|\\]|\\.)*"  # a table cell; `\|` is an escaped pipe inside it
    rows = re.findall(rf"^\| `([^`]+)` \|{cell}\| (yes|no) \|", page.read_text(), re.MULTILINE)
    return {name: status == "yes" for name, status in rows}


def test_the_docs_table_is_the_tested_table():
    documented = _documented_rows()
    assert documented == {name: callable(expected) for name, (_, expected) in TABLE.items()}


# Rows whose expansion compiles slowly (over ~8 s here) run in the full suite only.
SLOW_ROWS = {"nadam", "radam", "adabelief", "lamb", "rmsprop+bias_correction"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ROWS else name for name in TABLE],
)
def test_support_table_row(name):
    make_optimiser, expected = TABLE[name]
    problem, data = _problem()
    if not callable(expected):
        step = dl.OptaxStepMap(problem.loss, make_optimiser)
        with pytest.raises(dl.InputError, match=expected):
            dl.ModifiedFlow(step, H, 1).coefficients(problem.params, data)
        return
    f0, f1 = _coefficients(name)
    g = jax.grad(problem.loss)(problem.params, data)
    assert helpers.relative_error(f0, expected(problem.params, g)) < 1e-12
    assert np.all(np.isfinite(f1))


@pytest.mark.slow
def test_bias_correction_leaves_no_term_in_the_series():
    # driftlab's Adam keeps a float counter, optax's an int32 one; both are carried at a
    # burned-in count, so corrected and uncorrected Adam share every coefficient.
    # (optax's Adam against AdamFlow, uncorrected, is the next test.)
    problem, data = _problem()
    plain = dl.Adam(problem.loss, B1, B2, EPS, bias_correction=False)
    expected = dl.ModifiedFlow(plain, H, 1).coefficients(problem.params, data)
    corrected = dl.Adam(problem.loss, B1, B2, EPS, bias_correction=True)
    coefficients = dl.ModifiedFlow(corrected, H, 1).coefficients(problem.params, data)
    for mine, theirs in zip(coefficients, expected):
        assert helpers.relative_error(mine, theirs) < 1e-12
    optax_adam = dl.OptaxStepMap(problem.loss, TABLE["adam"][0])
    state = dl.ModifiedFlow(optax_adam, H, 0).slow_state(problem.params, data)
    assert state.opt_state[0].count == BURNED_IN_COUNT
    assert state.opt_state[0].count.dtype == jnp.int32


def test_optax_adam_order_one_is_adam_flow():
    problem, data = _problem()
    flow = lambda h: dl.AdamFlow(problem.loss, h, B1, B2, EPS, eps_inside_sqrt=False)
    expected = linear_coefficients(flow, problem.params, data)
    for mine, theirs in zip(_coefficients("adam"), expected):
        assert helpers.relative_error(mine, theirs) < 1e-12


def test_adamw_weight_decay_is_in_the_flow():
    problem, _ = _problem()
    (adam_f0, adam_f1), (adamw_f0, adamw_f1) = _coefficients("adam"), _coefficients("adamw")
    decay = -WEIGHT_DECAY * problem.params
    assert helpers.relative_error(adamw_f0 - adam_f0, decay) < 1e-12
    # At order 1 the decay also acts through the moments it shifts.
    assert helpers.relative_error(adamw_f1, adam_f1) > 1e-3


def test_a_zero_gradient_entry_under_a_root_is_refused():
    # The MLP's always-zero input pixels have zero gradients: sqrt(nu) is not smooth there.
    problem = helpers.small_mlp()
    step = dl.OptaxStepMap(problem.loss, lambda h: optax.adam(h, B1, B2, EPS))
    with pytest.raises(dl.InputError, match="`sqrt` of a value that is exactly zero"):
        dl.ModifiedFlow(step, H, 1).coefficients(problem.params, problem.data)


class _HandAdagrad(dl.AbstractStepMap):
    """Adagrad written as a driftlab map: its accumulator never decays."""

    loss: Callable

    def __call__(self, y, h, args):
        params, total = y
        g = jax.grad(self.loss)(params, args)
        total = total + g**2
        return params - h * g / jnp.sqrt(total), total

    def init(self, params, args=None):
        return params, jnp.ones_like(params)

    def parameters(self, y):
        return y[0]

    def with_parameters(self, y, params):
        return params, y[1]


def test_a_non_decaying_accumulator_of_any_map_is_refused():
    problem, data = _problem()
    flow = dl.ModifiedFlow(_HandAdagrad(problem.loss), H, 1)
    with pytest.raises(dl.InputError, match="no slow manifold.*eigenvalue 1"):
        flow.coefficients(problem.params, data)


BURN_IN = 100  # 0.7**100 < 1e-15: optax's bias correction has died out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_orders_from_the_slow_manifold_after_burn_in(name):
    # Measured slopes (adam / adamw): see docs/optax.md.
    problem, data = _problem()
    step = dl.OptaxStepMap(problem.loss, TABLE[name][0])
    burned_in = dl.integrators.advance(step, step.init(problem.params), 0.002, BURN_IN, data)
    # The iterate after burn-in lies on the slow manifold: slow_state of order p is within
    # O(h^(p+1)) of its moments (measured at h = 0.002: 5e-3, 6e-5, 1e-6).
    distances = []
    for order in (0, 1, 2):
        slow = dl.ModifiedFlow(step, 0.002, order).slow_state(burned_in.params, data)
        moments = lambda state: (state.opt_state[0].mu, state.opt_state[0].nu)
        distances.append(helpers.relative_error(moments(slow), moments(burned_in)))
    assert distances[2] < 0.1 * distances[1] < 0.01 * distances[0]
    hs = [0.005, 0.0025, 0.00125]
    for order in (0, 1, 2):
        make_flow = lambda h, order=order: dl.ModifiedFlow(step, h, order)
        estimate = dl.order_of_accuracy(step, make_flow, burned_in, hs, "local", data)
        assert abs(estimate.slope - (order + 2)) < 0.25, estimate
