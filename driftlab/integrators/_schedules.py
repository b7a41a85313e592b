r"""Learning-rate schedules in continuous time, and the time-dependent maps they drive.

A schedule has a limit as $h \to 0$ only when it is a fixed function of the
continuous time $\tau = n h$: step $n$ uses the rate $h\,\sigma(n h)$, and a
warmup of $W$ steps at step size $h$ lasts $\tau_w = W h$. The map is then
autonomous on the augmented state $(y, \tau)$, $\tau \mapsto \tau + h$, and
tends to the identity, so `driftlab.ModifiedFlow` expands it like any other;
its modified field is non-autonomous, $f_h(\tau, \theta)$, and flows take
$t = \tau$ (Hairer, Lubich & Wanner 2006, ch. VIII.2: variable step sizes by a
time transformation).
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Y
from .._errors import InputError, warn_at_caller
from ._maps import AbstractStepMap


#: Points at which a schedule's values are checked (finite, non-negative) when a map is built.
CHECK_POINTS = 1025
#: Kinks closer than this (relative to the time scale) to a measurement's ends count as on them.
KINK_TOLERANCE = 1e-9


class KinkWarning(UserWarning):
    """A measurement crosses a kink of a time-dependent map's schedule (the flow is piecewise)."""


class AbstractSchedule(eqx.Module):
    r"""A learning-rate multiplier $\sigma(\tau)$ of continuous time $\tau = n h$.

    Step $n$ of a `driftlab.Scheduled` map uses the rate $h\,\sigma(n h)$.
    $\sigma$ must be smooth (analytic, so that Taylor-mode AD expands it) away from
    the times listed in `kinks`, where it or a derivative jumps (the end of a linear
    warmup, a cosine that ends); finite and non-negative everywhere.
    `check_until` is the end of the interval on which the values are checked when a
    map is built.

    Subclass it and implement `__call__(tau)`, written with `jnp` and without Python
    branches on `tau` (use `jnp.where`).
    """

    kinks: AbstractVar[tuple[float, ...]]

    @abc.abstractmethod
    def __call__(self, tau: RealScalarLike) -> Float[Array, ""]:
        r"""**Returns:** $\sigma(\tau)$."""

    @property
    def check_until(self) -> float:
        """The end of the interval `[0, check_until]` on which the values are checked."""
        return 2 * max((1.0, *self.kinks))


def _time(value, name: str, *, positive: bool = True) -> float:
    """A length of time: a finite (positive) float, else a one-line `InputError`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"`{name}` must be a time (a float), got {value!r}.") from None
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise InputError(
            f"`{name}` must be a finite {'positive' if positive else 'non-negative'} time "
            f"(in units of tau = n h, not a number of steps), got {value}."
        )
    return value


class PolynomialSchedule(AbstractSchedule):
    r"""$\sigma(\tau) = \sum_k c_k \tau^k$: smooth everywhere (no kinks).

    **Arguments:** `coefficients` $(c_0, c_1, \dots)$, constant term first.
    """

    coefficients: tuple[float, ...] = eqx.field(converter=lambda c: tuple(float(x) for x in c))
    kinks: tuple[float, ...] = ()

    def __call__(self, tau):
        total = jnp.zeros_like(jnp.asarray(tau, jnp.float64))
        for c in reversed(self.coefficients):
            total = total * tau + c
        return total


class ExponentialSchedule(AbstractSchedule):
    r"""$\sigma(\tau) = s\,e^{r \tau}$ (exponential decay for $r < 0$): smooth everywhere.

    **Arguments:** `rate` $r$; `scale` $s$ (default 1).
    """

    rate: float = eqx.field(converter=float)
    scale: float = eqx.field(converter=float, default=1.0)
    kinks: tuple[float, ...] = ()

    def __call__(self, tau):
        return self.scale * jnp.exp(self.rate * tau)


def _cosine(tau, start, end, high, low):
    """The half cosine from `high` at `start` to `low` at `end` (unclipped)."""
    return low + (high - low) * 0.5 * (1 + jnp.cos(jnp.pi * (tau - start) / (end - start)))


class CosineSchedule(AbstractSchedule):
    r"""Cosine decay over a horizon $T$, then constant, as `optax.cosine_decay_schedule`:

    $$\sigma(\tau) = \sigma_T + (\sigma_0 - \sigma_T)\,\tfrac12\big(1 + \cos(\pi\tau/T)\big)
    \quad (\tau < T), \qquad \sigma(\tau) = \sigma_T \quad (\tau \ge T).$$

    Its second derivative jumps at $T$ (a kink of the flow's coefficients from $f_1$ on).

    **Arguments:** `horizon` $T$ (a time); `peak` $\sigma_0$ (default 1); `final`
    $\sigma_T$ (default 0).
    """

    horizon: float
    peak: float = 1.0
    final: float = 0.0
    kinks: tuple[float, ...]

    def __init__(self, horizon: float, peak: float = 1.0, final: float = 0.0):
        self.horizon = _time(horizon, "horizon")
        self.peak, self.final = float(peak), float(final)
        self.kinks = (self.horizon,)

    def __call__(self, tau):
        inside = _cosine(jnp.minimum(tau, self.horizon), 0.0, self.horizon, self.peak, self.final)
        return jnp.where(tau < self.horizon, inside, self.final)


class WarmupCosineSchedule(AbstractSchedule):
    r"""Linear warmup, then cosine decay, then constant: the recipe of
    `optax.warmup_cosine_decay_schedule`, with lengths in time.

    $\sigma$ rises linearly from `init` to `peak` on $[0, \tau_w]$, decays as a half
    cosine to `final` on $[\tau_w, T]$ and stays there. Kinks at $\tau_w$ (the slope
    jumps) and at $T$ (the second derivative jumps).

    **Arguments:** `warmup` $\tau_w$ and `horizon` $T > \tau_w$ (times, as `decay_steps`
    in optax counts the warmup); `peak` (default 1), `init` and `final` (default 0).
    """

    warmup: float
    horizon: float
    peak: float = 1.0
    init: float = 0.0
    final: float = 0.0
    kinks: tuple[float, ...]

    def __init__(self, warmup, horizon, peak=1.0, init=0.0, final=0.0):
        self.warmup, self.horizon = _time(warmup, "warmup"), _time(horizon, "horizon")
        if not self.horizon > self.warmup:
            raise InputError(
                f"`horizon` ({self.horizon}) must be later than `warmup` ({self.warmup}): "
                "the cosine decays between them."
            )
        self.peak, self.init, self.final = float(peak), float(init), float(final)
        self.kinks = (self.warmup, self.horizon)

    def __call__(self, tau):
        ramp = self.init + (self.peak - self.init) * tau / self.warmup
        clipped = jnp.clip(tau, self.warmup, self.horizon)
        decay = _cosine(clipped, self.warmup, self.horizon, self.peak, self.final)
        return jnp.where(tau < self.warmup, ramp, jnp.where(tau < self.horizon, decay, self.final))


class FunctionSchedule(AbstractSchedule):
    r"""Any callable $\sigma(\tau)$, smooth away from the declared `kinks`.

    **Arguments:** `fn`, called as `fn(tau)` with a float64 scalar (write it with
    `jnp`, no Python branches on `tau`); `kinks`: the times where it is not smooth.
    """

    fn: Callable[[RealScalarLike], Float[Array, ""]]
    kinks: tuple[float, ...] = eqx.field(default=(), converter=lambda k: tuple(map(float, k)))

    def __call__(self, tau):
        return jnp.asarray(self.fn(tau), jnp.float64)


#: optax schedules whose values jump: no modified flow across a jump.
_JUMPING = ("piecewise_constant_schedule", "piecewise_interpolate_schedule")


class OptaxSchedule(AbstractSchedule):
    r"""An optax schedule, written in steps for one step size, read in continuous time.

    An optax schedule `schedule(count)` gives the learning rate of step `count`; its
    lengths (warmup steps, decay steps) are numbers of steps, which only mean a time
    for a given step size. Written for the step size `reference_step` $h_r$, it is
    the schedule of continuous time

    $$\sigma(\tau) = \text{schedule}(\tau / h_r)\,/\,h_r,$$

    so that `Scheduled(map, OptaxSchedule(schedule, h_r, n))` at $h = h_r$ is exactly
    the run the schedule was written for, and at other $h$ the same recipe with the
    same lengths in time (the rate of step $n$ is $(h/h_r)\,\text{schedule}(n h/h_r)$).
    The schedule is evaluated at a float count.

    Its kinks (where the schedule's slope or second derivative jumps: the end of a
    warmup, a cosine that ends) are found by probing its derivatives on both sides of
    every integer count up to `num_steps` (optax's boundaries are integer counts),
    and a schedule that jumps (`optax.piecewise_constant_schedule`,
    a staircase `exponential_decay`) is refused: it has no modified flow across the
    jump.

    !!! warning
        optax's cosine decays raise their cosine to `exponent` and so have NaN
        derivatives once they have ended (0 ** 1.0 under AD): their flows are NaN past
        the end, which counts as a kink here. Measure up to it, or use
        `driftlab.WarmupCosineSchedule`, which is constant (and smooth) beyond.

    **Arguments:** `schedule` (a callable of the step count, as optax takes);
    `reference_step` $h_r$; `num_steps`, the length of the run in steps at $h_r$.

    **Raises:** `InputError` for a schedule that jumps, a bad step or length.
    """

    schedule: Callable
    reference_step: float
    num_steps: int = eqx.field(static=True)
    kinks: tuple[float, ...]

    def __init__(self, schedule: Callable, reference_step: float, num_steps: int):
        if not callable(schedule):
            raise InputError(f"`schedule` must be callable (an optax schedule), got {schedule!r}.")
        name = getattr(schedule, "__qualname__", "").split(".")[0]
        if name in _JUMPING:
            raise InputError(
                f"`schedule`: optax.{name} jumps between constant pieces, so the map has no "
                "modified flow across a jump (its flow would restart there); use a smooth "
                "decay (cosine, exponential without staircase) or measure between jumps."
            )
        self.reference_step = _time(reference_step, "reference_step")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise InputError(f"`num_steps` must be a positive integer, got {num_steps!r}.")
        self.schedule, self.num_steps = schedule, num_steps
        self.kinks = _probe_kinks(schedule, num_steps, self.reference_step)

    def __call__(self, tau):
        count = jnp.asarray(tau, jnp.float64) / self.reference_step
        return jnp.asarray(self.schedule(count), jnp.float64) / self.reference_step

    @property
    def check_until(self) -> float:
        return 2 * self.num_steps * self.reference_step


#: Offset (in steps) at which a schedule's slope is probed on each side of a count.
_PROBE = 1e-3


def _probe_kinks(schedule, num_steps: int, reference_step: float) -> tuple[float, ...]:
    """Times `k h_r` where `schedule` jumps (raise) or its slope jumps (return them)."""
    counts = np.arange(num_steps + 2, dtype=np.float64)
    value = jax.vmap(lambda c: jnp.asarray(schedule(c), jnp.float64))
    first = jax.grad(lambda c: jnp.asarray(schedule(c), jnp.float64))
    slope, curvature = jax.vmap(first), jax.vmap(jax.grad(first))
    try:
        left, right = np.asarray(value(counts - _PROBE)), np.asarray(value(counts + _PROBE))
        slope_left = np.asarray(slope(counts - _PROBE))
        slope_right = np.asarray(slope(counts + _PROBE))
        curvature_left = np.asarray(curvature(counts - _PROBE))
        curvature_right = np.asarray(curvature(counts + _PROBE))
    except (jax.errors.ConcretizationTypeError, TypeError) as error:
        raise InputError(
            "`schedule` cannot be evaluated at a float step count under JAX "
            f"({type(error).__name__}); write it with jnp and no Python branches on the count."
        ) from None
    scale = max(float(np.max(np.abs(left))), float(np.max(np.abs(right))), 1e-300)
    # Continuous: the two sides differ by at most the slopes times the probe's width.
    slopes = np.maximum(np.abs(slope_left), np.abs(slope_right))
    jumps = np.abs(right - left) > 1e-6 * scale + 4 * _PROBE * slopes
    if jumps.any():
        count = int(counts[np.flatnonzero(jumps)[0]])
        raise InputError(
            f"`schedule` jumps at step {count} (tau = {count * reference_step:g}): a jump has no "
            "modified flow across it; use a schedule that is continuous in the step count."
        )
    # A kink: the slope or the second derivative jumps (a cosine that ends has zero slope
    # on both sides), by more than 1% of its largest value on the run.
    # A derivative that is finite on one side only also ends a smooth piece (optax's
    # cosine raises 0 to its `exponent` once it has ended: NaN derivatives beyond).
    kinked = np.zeros(counts.shape, dtype=bool)
    for below, above in ((slope_left, slope_right), (curvature_left, curvature_right)):
        finite = np.isfinite(below) & np.isfinite(above)
        size = max(float(np.max(np.abs(below[finite]), initial=0.0)), 1e-300)
        size = max(size, float(np.max(np.abs(above[finite]), initial=0.0)))
        with np.errstate(invalid="ignore"):
            kinked |= finite & (np.abs(above - below) > max(1e-2 * size, 1e-14 * scale))
        kinked |= np.isfinite(below) != np.isfinite(above)
    return tuple(float(c * reference_step) for c in counts[kinked] if c > 0)


def check_schedule_values(schedule: AbstractSchedule, name: str = "schedule") -> None:
    """Raise `InputError` unless the schedule is finite and non-negative on its check interval."""
    taus = np.linspace(0.0, schedule.check_until, CHECK_POINTS)
    values = np.asarray(jax.vmap(schedule)(jnp.asarray(taus)))
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"`{name}` must be finite and non-negative (a learning-rate multiplier): "
            f"sigma({taus[i]:.6g}) = {values[i]:g}."
        )


class ScheduledState(eqx.Module):
    r"""State of `Scheduled`: the wrapped map's state and the continuous time $\tau = n h$."""

    state: Y
    tau: Float[Array, ""] = eqx.field(converter=lambda t: _as_time(t))


def _as_time(t):
    """A float64 scalar; numpy values stay numpy (concrete while a layout is traced)."""
    if isinstance(t, np.ndarray | np.generic):
        return np.asarray(t, np.float64)
    return jnp.asarray(t, jnp.float64)


class Scheduled(AbstractStepMap):
    r"""A map with a learning-rate schedule: step $n$ runs `step_map` with step $h\,\sigma(n h)$.

    $$(y, \tau) \mapsto \big(\Phi_{h\sigma(\tau)}(y),\ \tau + h\big)$$

    on the augmented state `ScheduledState(y, tau)`. For optimisers whose step
    size is their learning rate (`GradientDescent`, `SGD`, `HeavyBall` and
    `Nesterov` in optax's form, `Adam`, `RMSProp`, an `OptaxStepMap` built as
    `lambda lr: optax.adamw(lr, ...)`) this is the schedule as optax applies it
    (AdamW's decay is multiplied by the scheduled rate, as in optax). For gradient
    descent it is Euler on $(\theta, \tau)$ with $F = (-\sigma(\tau)\nabla L, 1)$, whose
    modified field is

    $$f_0 = -\sigma g, \qquad f_1 = -\tfrac12\big(\sigma^2 H g - \sigma' g\big),$$

    i.e. to first order the rate of half a step earlier, $\sigma(\tau - h/2)$, plus
    implicit gradient regularisation (`tests/test_schedules.py` checks $f_1$, $f_2$
    against sympy and the whole series against a matrix logarithm).

    Bias corrections inside `step_map` keep their step counters (held burned in by
    the expansion: the fixed-$b$ regime, see `driftlab.AdamODE` for the other).

    **Arguments:** `step_map` (any `AbstractStepMap`) and `schedule` (an
    `AbstractSchedule`: lengths in time, so that the map is a smooth family in $h$).

    **Raises:** `InputError` when the schedule is negative or not finite on
    `[0, schedule.check_until]`.

    ??? cite "Reference"
        ```bibtex
        @book{hairer2006geometric,
          title={Geometric Numerical Integration},
          author={Hairer, Ernst and Lubich, Christian and Wanner, Gerhard},
          edition={2},
          publisher={Springer},
          year={2006},
          note={Chapter VIII.2: variable step sizes by time transformation}
        }
        ```
    """

    step_map: AbstractStepMap
    schedule: AbstractSchedule

    def __check_init__(self):
        if not isinstance(self.step_map, AbstractStepMap):
            raise InputError(
                "`step_map` must be a driftlab.AbstractStepMap, got "
                f"{type(self.step_map).__name__}."
            )
        if not isinstance(self.schedule, AbstractSchedule):
            raise InputError(
                "`schedule` must be a driftlab.AbstractSchedule (lengths in time), got "
                f"{type(self.schedule).__name__}; wrap a function of tau in FunctionSchedule "
                "or an optax schedule in OptaxSchedule."
            )
        check_schedule_values(self.schedule)

    def __call__(self, y: ScheduledState, h: RealScalarLike, args: Args) -> ScheduledState:
        rate = h * self.schedule(y.tau)
        return ScheduledState(self.step_map(y.state, rate, args), y.tau + self.duration(h, args))

    def init(self, params: Y, args: Args = None) -> ScheduledState:
        return ScheduledState(self.step_map.init(params, args), 0.0)

    def parameters(self, y: ScheduledState) -> Y:
        return self.step_map.parameters(y.state)

    def with_parameters(self, y: ScheduledState, params: Y) -> ScheduledState:
        return ScheduledState(self.step_map.with_parameters(y.state, params), y.tau)

    def duration(self, h: RealScalarLike, args: Args) -> RealScalarLike:
        return self.step_map.duration(h, args)

    def time(self, y: ScheduledState) -> Float[Array, ""]:
        return y.tau

    def with_time(self, y: ScheduledState, tau: RealScalarLike) -> ScheduledState:
        return ScheduledState(y.state, tau)

    def kinks(self) -> tuple[float, ...]:
        return self.schedule.kinks

    def check_expansion(self, params: Y, h: RealScalarLike, args: Args) -> None:
        self.step_map.check_expansion(params, h, args)


def check_time(step: AbstractStepMap, t, params: Y, args: Args) -> Float[Array, ""] | None:
    """The time at which a flow of `step` is evaluated: `None` for an autonomous map, else
    `t` (default 0) as a float64 scalar, finite where concrete."""
    if step.time(step.init(params, args)) is None:
        return None
    t = jnp.asarray(0.0 if t is None else t, jnp.float64)
    if jnp.ndim(t) != 0:
        raise InputError(f"`t` must be a scalar time, got shape {jnp.shape(t)}.")
    if not isinstance(t, jax.core.Tracer) and not np.isfinite(float(t)):
        raise InputError(f"`t` must be a finite time, got {float(t)}.")
    return t


def kinks_between(step: AbstractStepMap, start: float, end: float) -> tuple[float, ...]:
    """The kinks of `step` strictly inside `(start, end)`.

    **Raises:** `InputError` when `start` or `end` lies on a kink: a measurement point
    exactly at a kink picks one side of it by rounding, so it is refused.
    """
    inside = []
    for kink in step.kinks():
        tolerance = KINK_TOLERANCE * max(1.0, abs(kink))
        if abs(start - kink) <= tolerance or abs(end - kink) <= tolerance:
            raise InputError(
                f"a measurement point lies exactly on the schedule's kink at tau = {kink:g} "
                f"(the interval [{start:g}, {end:g}]); its flow is piecewise there: move "
                "the start or end time off the kink."
            )
        if start < kink < end:
            inside.append(kink)
    return tuple(inside)


def kink_message(kinks: tuple[float, ...]) -> str:
    """The warning for a measurement that crosses kinks."""
    times = ", ".join(f"tau = {k:g}" for k in kinks)
    return (
        f"the measurement crosses the schedule's kink at {times}: the modified flow is "
        "piecewise there and one step across it has a local error O(h^2) whatever the "
        "flow's order, so global errors are at best O(h^2) across it"
    )


def check_kinks(step: AbstractStepMap, start: float, end: float) -> None:
    """Refuse a measurement point on a kink; warn (`KinkWarning`) when one is crossed."""
    crossed = kinks_between(step, start, end)
    if crossed:
        warn_at_caller(kink_message(crossed) + ".", KinkWarning)


#: Below this |x|, log1p(x)/x is summed as its series (exact Taylor coefficients at x = 0).
_SERIES_BELOW = 1e-2
_SERIES_TERMS = 12


def _log1p_ratio(x):
    r"""$\log(1 + x)/x$, analytic at $x = 0$ (its series there), so that jet expands it."""
    near = jnp.where(jnp.abs(x) < _SERIES_BELOW, x, 0.0)
    series = sum((-near) ** k / (k + 1) for k in range(_SERIES_TERMS))
    far = jnp.where(jnp.abs(x) < _SERIES_BELOW, 1.0, x)
    return jnp.where(jnp.abs(x) < _SERIES_BELOW, series, jnp.log1p(far) / far)


def bias_correction(rate, tau, h):
    r"""$1 - (1 - c h)^{\tau/h}$, written $1 - \exp(\tau \cdot \log(1 - ch)/h)$: smooth in $h$
    at fixed $\tau$, with limit $1 - e^{-c\tau}$ as $h \to 0$."""
    return -jnp.expm1(-rate * tau * _log1p_ratio(-rate * h))


class AdamODEState(eqx.Module):
    r"""State of `AdamODE`: parameters, first and second moments, and the time $\tau = n h$."""

    params: Y
    mu: Y
    nu: Y
    tau: Float[Array, ""] = eqx.field(converter=lambda t: _as_time(t))


class AdamODE(AbstractStepMap):
    r"""Adam in the ODE scaling $1 - \beta_i = c_i h$, bias correction included, from step 0.

    $$m' = m + c_1 h\,(g - m), \quad v' = v + c_2 h\,(g^2 - v), \quad
    \theta' = \theta - h\,\sigma(\tau)\,\frac{\hat m}{\sqrt{\hat v} + \epsilon}
    \ \big(- h\,\sigma(\tau)\,\lambda\theta\big), \quad \tau' = \tau + h,$$

    with $\hat m = m'/(1 - (1 - c_1 h)^{(\tau + h)/h})$ and likewise $\hat v$: at
    $\tau = n h$ this is optax's Adam (AdamW with `weight_decay` $\lambda$) with
    $b_i = 1 - c_i h$ and its bias correction at step $n + 1$. As $h \to 0$ at fixed
    $c_i$, the correction tends to $1 - e^{-c_i \tau}$, smooth in $\tau$, and the moments
    are ODE states (Barakat & Bianchi 2021; Malladi et al. 2022): the map tends to
    the identity on $(\theta, m, v, \tau)$, so `driftlab.ModifiedFlow` gives its modified
    flow of any order on $(\theta, m, v)$ at $t = \tau$. The **parameters** of this map,
    as the flow and the measurements see them, are the triple `(params, mu, nu)`;
    `init((params, mu, nu))` starts at $\tau = 0$.

    The flow's field divides $m$ by $1 - e^{-c_1\tau}$: it is singular at $\tau = 0$
    (where $m = 0$ too; $\hat m \to g$), a regular singular point, and its coefficient
    $f_k$ grows like $\tau^{-k}$ there. The modified series is uniform only on
    $\tau \ge \tau_0 > 0$; see the docs' concepts page for the orders measured from
    step 0.

    **Arguments:** `loss`; `c1`, `c2` (the moments' rates, $c_i = (1 - b_i)/h$);
    `eps` (outside the root, as optax); `weight_decay` (default 0); `schedule`
    (default constant 1); `eps_root` (inside the root, as optax's: keeps the map
    smooth where a gradient entry vanishes identically).

    ??? cite "References"
        ```bibtex
        @article{barakat2021convergence,
          title={Convergence and Dynamical Behavior of the ADAM Algorithm for
                 Nonconvex Stochastic Optimization},
          author={Barakat, Anas and Bianchi, Pascal},
          journal={SIAM Journal on Optimization},
          volume={31},
          number={1},
          pages={244--274},
          year={2021}
        }
        @inproceedings{malladi2022sdes,
          title={On the SDEs and Scaling Rules for Adaptive Gradient Algorithms},
          author={Malladi, Sadhika and Lyu, Kaifeng and Panigrahi, Abhishek and Arora, Sanjeev},
          booktitle={Advances in Neural Information Processing Systems},
          year={2022}
        }
        ```
    """

    loss: Callable[[Y, Args], Float[Array, ""]]
    c1: float = eqx.field(converter=float, default=10.0)
    c2: float = eqx.field(converter=float, default=1.0)
    eps: float = eqx.field(converter=float, default=1e-8)
    weight_decay: float = eqx.field(converter=float, default=0.0)
    schedule: AbstractSchedule = eqx.field(default_factory=lambda: PolynomialSchedule((1.0,)))
    eps_root: float = eqx.field(converter=float, default=0.0)

    def __check_init__(self):
        for name in ("c1", "c2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(
                    f"`{name}` must be a positive rate (1 - b = {name} * h), got {value}."
                )
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise InputError(f"`eps` must be finite and non-negative, got {self.eps}.")
        check_schedule_values(self.schedule)

    def __call__(self, y: AdamODEState, h: RealScalarLike, args: Args) -> AdamODEState:
        grad = jax.grad(self.loss)(y.params, args)
        mu = jax.tree.map(lambda m, g: m + self.c1 * h * (g - m), y.mu, grad)
        nu = jax.tree.map(lambda v, g: v + self.c2 * h * (g**2 - v), y.nu, grad)
        tau = y.tau + h
        k1, k2 = bias_correction(self.c1, tau, h), bias_correction(self.c2, tau, h)
        rate = h * self.schedule(y.tau)
        params = jax.tree.map(
            lambda p, m, v: p - rate * ((m / k1) / self._root(v / k2) + self.weight_decay * p),
            y.params,
            mu,
            nu,
        )
        return AdamODEState(params, mu, nu, tau)

    def _root(self, v_hat):
        return jnp.sqrt(v_hat + self.eps_root) + self.eps

    def init(self, params, args: Args = None) -> AdamODEState:
        del args
        theta, mu, nu = params
        return AdamODEState(theta, mu, nu, jnp.zeros((), jnp.float64))

    def parameters(self, y: AdamODEState):
        return (y.params, y.mu, y.nu)

    def with_parameters(self, y: AdamODEState, params) -> AdamODEState:
        theta, mu, nu = params
        return AdamODEState(theta, mu, nu, y.tau)

    def time(self, y: AdamODEState) -> Float[Array, ""]:
        return y.tau

    def with_time(self, y: AdamODEState, tau: RealScalarLike) -> AdamODEState:
        return AdamODEState(y.params, y.mu, y.nu, tau)

    def kinks(self) -> tuple[float, ...]:
        return self.schedule.kinks
