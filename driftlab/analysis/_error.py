import warnings

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Args, RealScalarLike, Y
from .._errors import (
    check_same_structure,
    check_step_size,
    CostWarning,
    DivergenceError,
    InputError,
    MeasurementError,
    StabilityWarning,
    warn_at_caller,
)
from .._tree import array_leaves, split, tree_norm, tree_sub
from ..flows import AbstractFlow
from ..integrators import AbstractStepMap, advance, iterate, solve
from ..integrators._iterate import check_state
from ..integrators._kinks import crossed_kinks
from ..integrators._schedules import check_kinks
from ..integrators._solve import DEFAULT_ATOL, DEFAULT_RTOL
from ._spectra import stability_index


#: Round-off of one step is taken as this many machine epsilons of the state's norm.
ROUNDOFF_ULPS = 100.0
#: The solver's error is taken as this multiple of its tolerance.
SOLVER_SAFETY = 10.0
#: A measurement has diverged when its error is at least this multiple of the size of the
#: state compared (the larger of |params(y0)| and the flow's |phi_t(params(y0))|): the
#: iterates then predict no digit of the flow's solution.
DIVERGENCE_RATIO = 1.0


class ErrorMeasurement(eqx.Module):
    r"""One measured distance between a map's iterates and a flow.

    **Attributes:**

    - `h`: the step size; `num_steps`: how many map steps were taken.
    - `t`: the flow time compared (`num_steps * duration(h)`).
    - `error`: $\|\text{params}(\Phi_h^n(y_0)) - \varphi_t(\text{params}(y_0))\|_2$.
    - `scale`: the norm of the compared state.
    - `floor`: the smallest error this measurement can resolve, from
      round-off (`ROUNDOFF_ULPS` ulps per step) and the solver's tolerance.
    - `kink`: empty, or why the error does not follow the flow's order: the map
      crosses a kink of the loss (`relu`, `abs`, `max`, a `where` on a
      comparison) between the start and the end of the comparison, at the
      map's last iterate or at the flow's solution (see
      `driftlab.integrators._kinks`).
    """

    h: float
    num_steps: int
    t: float
    error: float
    scale: float
    floor: float
    kink: str = ""

    @property
    def at_floor(self) -> bool:
        """Whether the error is within a factor 10 of the floor (not trustworthy)."""
        return self.error < 10 * self.floor


def _floor(scale, num_steps, rtol, atol, size):
    roundoff = ROUNDOFF_ULPS * np.finfo(np.float64).eps * scale * max(num_steps, 1)
    solver = SOLVER_SAFETY * (rtol * scale + atol * np.sqrt(size))
    return float(roundoff + solver)


def _checked_inputs(step, flow, y0, h):
    check_state(step, y0)
    if not callable(flow):
        raise InputError("`flow` must be callable as `flow(t, y, args)`.")
    return check_step_size(h)


def _flow_time(step, h, args, num_steps):
    return float(step.duration(h, args)) * num_steps


def _at_time(step, y0) -> dict:
    """`{"t": tau}` for a time-dependent map's state, passed to its flow's state methods."""
    tau = step.time(y0)
    return {} if tau is None else {"t": tau}


def start_time(step, y0) -> float:
    r"""Where the flow of `step` starts from `y0`: its time $\tau$ (0 for autonomous maps)."""
    tau = step.time(y0)
    return 0.0 if tau is None else float(tau)


def starting_state(step, flow, y0, args, on_slow_manifold: bool):
    """`y0`, or the state over its parameters on the flow's slow manifold (`flow.slow_state`)."""
    if on_slow_manifold and isinstance(flow, AbstractFlow):
        state = flow.slow_state(step.parameters(y0), args, **_at_time(step, y0))
        if state is not None:
            check_same_structure(state, y0, f"{type(flow).__name__}.slow_state", "y0")
            return state
    return y0


def region_problem(step, flow, y0, args) -> str | None:
    """Why `flow` does not describe `step` at the parameters of `y0` (`flow.outside_region`)."""
    if isinstance(flow, AbstractFlow):
        return flow.outside_region(step.parameters(y0), args, **_at_time(step, y0))
    return None


def _flow_start(params: Y, complex_state: bool) -> Y:
    """The flow's initial state: `params`, or a complex128 copy of them (`complex_state`)."""
    if not complex_state:
        return params
    arrays, static = split(params)
    return eqx.combine(jtu.tree_map(lambda leaf: jnp.asarray(leaf, jnp.complex128), arrays), static)


def _compare(
    step, flow, y0, h, num_steps, args, rtol, atol, on_slow_manifold=True, complex_state=False
) -> ErrorMeasurement:
    problem = region_problem(step, flow, y0, args)
    if problem is not None:
        raise MeasurementError(f"{type(flow).__name__}: {problem}.")
    advice = flow.cost_advice(step.parameters(y0)) if isinstance(flow, AbstractFlow) else None
    if advice is not None:
        warn_at_caller(advice, CostWarning)
    y0 = starting_state(step, flow, y0, args, on_slow_manifold)
    params0 = step.parameters(y0)
    y_map = advance(step, y0, h, num_steps, args)
    t = _flow_time(step, h, args, num_steps)
    t0 = start_time(step, y0)
    check_kinks(step, t0, t0 + t)
    # A solve the flow itself calls costly shows its progress (every 10% of the time).
    start = _flow_start(params0, complex_state)
    y_flow = solve(
        flow, start, t0 + t, args=args, t0=t0, rtol=rtol, atol=atol, progress=advice is not None
    )
    check_same_structure(y_flow, params0, "flow(t, y, args)", "the parameters of y0")
    if any(jnp.iscomplexobj(leaf) for leaf in array_leaves(y_flow)):
        arrays, static = split(y_flow)
        y_flow = eqx.combine(jtu.tree_map(jnp.real, arrays), static)
    error = float(tree_norm(tree_sub(step.parameters(y_map), y_flow)))
    scale = float(tree_norm(params0))
    check_divergence(step, h, num_steps, error, max(scale, float(tree_norm(y_flow))))
    # A kink crossed by either path: compare the branches at the start with both ends.
    kink = crossed_kinks(step, y0, [y_map, step.with_parameters(y_map, y_flow)], h, args)
    size = sum(np.size(leaf) for leaf in array_leaves(params0))
    return ErrorMeasurement(
        h=h,
        num_steps=num_steps,
        t=t,
        error=error,
        scale=scale,
        floor=_floor(scale, num_steps, rtol, atol, size),
        kink=kink or "",
    )


def check_divergence(step, h, num_steps, error, size) -> None:
    """Raise `DivergenceError` when `error` is `DIVERGENCE_RATIO` times `size` or more."""
    if not error < DIVERGENCE_RATIO * size:
        raise DivergenceError(
            f"the iterates of {type(step).__name__} with h={h:g} diverged: after "
            f"{num_steps} step(s) they lie {error:.3g} away from the flow's solution, as far "
            f"as the state itself is large ({size:.3g}), so the error measures the "
            "divergence, not the flow (h is likely beyond the stability edge, h * lambda_max "
            ">= 2 for GD); use a smaller `h` or a shorter `t_end`."
        )


def warn_if_kink(measurement: ErrorMeasurement) -> ErrorMeasurement:
    """Warn (`StabilityWarning`) at the user's line when the measurement crossed a kink."""
    if measurement.kink:
        warn_at_caller(
            f"h = {measurement.h:g}: {measurement.kink}; this error is not that of a "
            "modified flow.",
            StabilityWarning,
        )
    return measurement


def warn_if_unstable(step, y0, h, args) -> float:
    """Measure the stability index at `h` and warn (`StabilityWarning`) when it is >= 2."""
    index = stability_index(step, y0, h, args)
    if index >= 2:
        warnings.warn(
            f"h = {h:g} is beyond the edge of stability: max |1 - mu| = {index:.3g} >= 2 "
            "over the eigenvalues mu of the map's Jacobian (h * lambda_max >= 2 for "
            "GD). The iterates oscillate or diverge there and backward-error series "
            "do not converge; modified-flow errors are not expected to follow their order.",
            StabilityWarning,
            stacklevel=3,
        )
    return index


def local_error(
    step: AbstractStepMap,
    flow,
    y0: Y,
    h: RealScalarLike,
    args: Args = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    on_slow_manifold: bool = True,
    complex_state: bool = False,
) -> ErrorMeasurement:
    r"""One step of the map against the flow over the same time: $\|\Phi_h(y_0) - \varphi_h(y_0)\|$.

    An order-`p` flow gives $O(h^{p+2})$. For maps with state (momentum,
    Adam), the parameters are compared and the flow starts from the
    parameters of `y0`; with `on_slow_manifold` (the default) the map starts
    from `flow.slow_state(params(y0), args)` where the flow defines one, so that
    the measured error is the flow's and not the transient of a badly
    initialised buffer. With `complex_state` the flow is solved from a complex128
    copy of the parameters and the real part of the difference is measured: the
    principal flow (`driftlab.PrincipalFlow`) needs it where some $h\lambda_i > 1$.

    **Raises:** `InputError` for bad input; `MeasurementError` if the solve
    fails, or if the flow's slow manifold does not exist at this `h`
    (`flow.outside_region`: momentum and adaptive flows beyond their region).
    """
    h = _checked_inputs(step, flow, y0, h)
    return warn_if_kink(
        _compare(step, flow, y0, h, 1, args, rtol, atol, on_slow_manifold, complex_state)
    )


#: The most map steps one global-error measurement may take.
MAX_STEPS = 10_000_000


def _num_steps(step, h, args, t_end) -> int:
    t_end = check_step_size(t_end, "t_end")
    ratio = t_end / float(step.duration(h, args))
    if ratio > MAX_STEPS:
        raise InputError(
            f"`t_end` / h = {ratio:.3g} steps is more than {MAX_STEPS:,}; use a larger `h` "
            "or a shorter `t_end`."
        )
    num_steps = int(round(ratio))
    if num_steps < 1:
        raise InputError(f"`t_end` = {t_end:g} is shorter than one step of h = {h:g}.")
    return num_steps


def global_error(
    step: AbstractStepMap,
    flow,
    y0: Y,
    h: RealScalarLike,
    t_end: RealScalarLike,
    args: Args = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    on_slow_manifold: bool = True,
    complex_state: bool = False,
) -> ErrorMeasurement:
    r"""$n = \mathrm{round}(t_\text{end}/h)$ steps of the map against the flow over time $n h$.

    An order-`p` flow gives $O(h^{p+1})$. The flow time compared is exactly
    `num_steps * duration(h)` (recorded in the result as `t`). `on_slow_manifold`
    and `complex_state` as in `local_error`.

    **Raises:** as `local_error`.
    """
    h = _checked_inputs(step, flow, y0, h)
    num_steps = _num_steps(step, h, args, t_end)
    return warn_if_kink(
        _compare(step, flow, y0, h, num_steps, args, rtol, atol, on_slow_manifold, complex_state)
    )


class Drift(eqx.Module):
    """The distance between a map's iterates and a flow along a trajectory.

    **Attributes:** `times` (flow time of each iterate), `errors` (the
    distance at each), `map_norms` and `flow_norms` (the norms of the two
    trajectories' parameters), `h`.
    """

    h: float
    times: np.ndarray
    errors: np.ndarray
    map_norms: np.ndarray
    flow_norms: np.ndarray


def drift(
    step: AbstractStepMap,
    flow,
    y0: Y,
    h: RealScalarLike,
    n: int,
    args: Args = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    on_slow_manifold: bool = True,
    complex_state: bool = False,
) -> Drift:
    r"""The error $\|\text{params}(y_k) - \varphi_{t_k}(\text{params}(y_0))\|$ for $k = 0..n$.

    `on_slow_manifold` and `complex_state` as in `local_error` (with a complex
    state, `flow_norms` are the norms of the real parts).
    """
    h = _checked_inputs(step, flow, y0, h)
    y0 = starting_state(step, flow, y0, args, on_slow_manifold)
    ys = split(step.parameters(iterate(step, y0, h, n, args)))[0]
    t0 = start_time(step, y0)
    times = t0 + np.arange(n + 1) * float(step.duration(h, args))
    check_kinks(step, t0, times[-1])
    params0 = step.parameters(y0)
    start = _flow_start(params0, complex_state)
    flow_ys = split(
        solve(flow, start, times[-1], ts=times, args=args, t0=t0, rtol=rtol, atol=atol)
    )[0]
    per_time = lambda tree: np.array(
        [float(tree_norm(jtu.tree_map(lambda leaf: jnp.real(leaf[k]), tree))) for k in range(n + 1)]
    )
    return Drift(
        h=h,
        times=times,
        errors=per_time(tree_sub(ys, flow_ys)),
        map_norms=per_time(ys),
        flow_norms=per_time(flow_ys),
    )
