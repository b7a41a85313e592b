import json
import math
import warnings
from collections.abc import Callable, Sequence

import equinox as eqx
import numpy as np
import scipy.stats

from .._custom_types import Args, Y
from .._errors import (
    check_factory,
    check_step_size,
    DivergenceError,
    InputError,
    MeasurementError,
    RoundoffWarning,
    StabilityWarning,
    warn_at_caller,
)
from ..flows import AbstractFlow
from ..integrators import AbstractStepMap
from ..integrators._schedules import kink_message, kinks_between, KinkWarning
from ..integrators._solve import DEFAULT_ATOL, DEFAULT_RTOL
from ._error import (
    _checked_inputs,
    _compare,
    _num_steps,
    region_problem,
    start_time,
    warn_if_unstable,
)


#: The fewest usable points a slope may be fitted to.
MIN_POINTS = 3
#: The narrowest h-range (max / min) a slope may be fitted over.
MIN_RANGE = 2.0
#: How far above its round-off / solver floor a point's error must lie to be fitted.
FLOOR_MARGIN = 10.0
#: Why a point of a sweep is left out of the fit (`OrderEstimate.causes`), as the table says it.
CAUSES = {
    "floor": "floor",
    "region": "outside region",
    "kink": "kink crossed",
    "diverged": "diverged",
}


class OrderEstimate(eqx.Module):
    r"""A measured order of accuracy: errors over a grid of step sizes and the fitted slope.

    **Attributes:**

    - `kind`: `"local"` (one step) or `"global"` (fixed time `t_end`).
    - `hs`, `errors`, `floors`: the sweep, with each point's resolution floor.
    - `used`: which points entered the fit; the others are listed in
      `excluded` with the reason, one of `CAUSES` (`causes`): within a factor
      10 of the round-off / solver floor; outside the region where the flow
      describes the map; a kink of the loss crossed during the step; diverged.
    - `notes`: per point, the reason it was left out other than the floor
      (empty otherwise): the flow's `outside_region` (a momentum or adaptive
      map without a slow manifold at that `h`; error NaN, not measured), the
      kink crossed between the start and the end of the comparison (error
      measured, but of no modified flow), or the divergence (error NaN).
    - `causes`: per point, `""` where it was used, else its key in `CAUSES`.
    - `slope`, `slope_stderr`, `intercept`: the least-squares fit of
      $\log_2 \text{error}$ against $\log_2 h$ on the used points.
    - `expected`: the slope the flow's order predicts (`order + 2` local,
      `order + 1` global).
    - `stability_index`: $\max|1 - \mu|$ of the map's Jacobian at the largest
      `h` ($h\lambda_{max}$ for GD); at 2 or more the fit is not meaningful.
    - `map_name`, `flow_name`, `t_end`.
    - `remarks`: what limits the whole sweep, e.g. a time-dependent map's schedule
      kink inside the measured interval (the flow is piecewise there: one step
      across it has local error $O(h^2)$, so global orders are capped at 2).
    """

    kind: str = eqx.field(static=True)
    map_name: str = eqx.field(static=True)
    flow_name: str = eqx.field(static=True)
    hs: np.ndarray
    errors: np.ndarray
    floors: np.ndarray
    used: np.ndarray
    slope: float
    slope_stderr: float
    intercept: float
    expected: float
    stability_index: float
    t_end: float | None = None
    notes: tuple[str, ...] = ()
    remarks: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()

    def _notes(self) -> tuple[str, ...]:
        return self.notes or ("",) * len(self.hs)

    def _causes(self) -> tuple[str, ...]:
        if self.causes:
            return self.causes
        # Estimates built before `causes` existed: a note meant outside the region.
        return tuple(
            "" if u else ("region" if note else "floor")
            for u, note in zip(self.used, self._notes())
        )

    @property
    def excluded(self) -> list[str]:
        """A line per point left out of the fit, saying why."""
        return [
            f"h={h:.4g}: {note}"
            if note
            else f"h={h:.4g}: error {e:.3g} within {FLOOR_MARGIN:g}x of the floor {f:.3g}"
            for h, e, f, u, note in zip(self.hs, self.errors, self.floors, self.used, self._notes())
            if not u
        ]

    def agrees(self, tolerance: float) -> bool:
        """Whether the fitted slope is within `tolerance` of the expected one."""
        return abs(self.slope - self.expected) <= tolerance

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "map": self.map_name,
            "flow": self.flow_name,
            "t_end": self.t_end,
            "hs": [float(h) for h in self.hs],
            "errors": [float(e) for e in self.errors],
            "floors": [float(f) for f in self.floors],
            "used": [bool(u) for u in self.used],
            "slope": self.slope,
            "slope_stderr": self.slope_stderr,
            "intercept": self.intercept,
            "expected": self.expected,
            "stability_index": self.stability_index,
            "excluded": self.excluded,
            "remarks": list(self.remarks),
            "causes": list(self._causes()),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"{self.kind} error of {self.map_name} against {self.flow_name}"
            + (f" over t = {self.t_end:g}" if self.t_end is not None else ""),
            f"{'h':>12} {'error':>12} {'floor':>12}  used",
        ]
        for h, e, f, u, cause in zip(self.hs, self.errors, self.floors, self.used, self._causes()):
            lines.append(
                f"{h:12.4e} {e:12.4e} {f:12.4e}  {'yes' if u else f'no ({CAUSES[cause]})'}"
            )
        lines.append(
            f"slope {self.slope:.3f} +- {self.slope_stderr:.3f} (expected {self.expected:g}); "
            f"max |1 - mu| at largest h: {self.stability_index:.3g}"
        )
        lines.extend(f"note: {remark}" for remark in self.remarks)
        return "\n".join(lines)


def check_step_grid(hs: Sequence[float]) -> np.ndarray:
    """The grid `hs` as a sorted array, after checking it can support a slope fit."""
    try:
        grid = np.array([check_step_size(h, "hs") for h in hs])
    except TypeError as error:
        raise InputError("`hs` must be a sequence of positive step sizes.") from error
    grid = np.unique(grid)
    if grid.size < MIN_POINTS:
        raise InputError(
            f"`hs` needs at least {MIN_POINTS} distinct step sizes to fit a slope, got {grid.size}."
        )
    if grid[-1] / grid[0] < MIN_RANGE:
        raise InputError(
            f"`hs` spans only a factor {grid[-1] / grid[0]:.3g}; a slope needs at least a "
            f"factor {MIN_RANGE:g} between the smallest and largest step size."
        )
    return grid


def above_floor(errors, floors, margin: float = FLOOR_MARGIN) -> np.ndarray:
    """Which errors are finite, positive and at least `margin` times their floor."""
    errors, floors = np.asarray(errors), np.asarray(floors)
    with np.errstate(invalid="ignore"):
        return np.isfinite(errors) & (errors > 0) & (errors >= margin * floors)


def can_fit(hs, usable) -> bool:
    """Whether the `usable` points are enough (`MIN_POINTS`, spanning `MIN_RANGE`) for a slope."""
    hs = np.asarray(hs)[usable]
    return hs.size >= MIN_POINTS and hs.max() / hs.min() >= MIN_RANGE


def fit_slope(hs, errors, usable) -> tuple[float, float, float]:
    """Least-squares slope, its standard error and intercept of log2(errors) vs log2(hs)."""
    x, y = np.log2(hs[usable]), np.log2(errors[usable])
    fit = scipy.stats.linregress(x, y)
    return float(fit.slope), float(fit.stderr), float(fit.intercept)


def order_of_accuracy(
    step: AbstractStepMap,
    make_flow: Callable[[float], object],
    y0: Y,
    hs: Sequence[float],
    kind: str = "local",
    args: Args = None,
    *,
    t_end: float | None = None,
    expected: float | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    check_stability: bool = True,
    on_slow_manifold: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> OrderEstimate:
    r"""Measure the order of accuracy of `make_flow(h)` against `step` over the grid `hs`.

    For each `h`, measures `local_error` (`kind="local"`) or `global_error`
    over `t_end` (`kind="global"`), then fits the log-log slope on the points
    that lie clearly above the round-off / solver floor. An order-`p` flow
    should give slope `p + 2` (local) or `p + 1` (global).

    **Arguments:**

    - `step`: the map; `make_flow(h)`: the flow for step size `h`.
    - `y0`: the initial state; `hs`: at least 3 step sizes spanning a factor 2.
    - `kind`: `"local"` or `"global"`; `t_end`: the time of a global
      measurement (required then).
    - `expected`: the slope to compare with; defaults to the flow's `order`
      plus 2 (local) or 1 (global), at most 2 for a global measurement that
      crosses a schedule's kink (`remarks`).
    - `on_slow_manifold`: start the map, at each `h`, from
      `make_flow(h).slow_state(params(y0), args)` where the flow defines one
      (momentum and adaptive maps), as `local_error` does.
    - `check_stability`: measure the stability index at the largest `h` and
      warn (`StabilityWarning`) at 2 or beyond.

    Points where `make_flow(h).outside_region(params(y0), args)` gives a reason
    (no slow manifold at that `h`) are not measured: they are excluded with
    that reason (`OrderEstimate.notes`) and a `StabilityWarning`. So are points
    whose iterates diverge (`DivergenceError`: non-finite, or an error as large
    as the state compared; error NaN) and points where the map crosses a kink
    of the loss during the compared step (`ErrorMeasurement.kink`: `relu`,
    `abs`, `max`, a `where` on a comparison; error measured, not fitted).
    - `progress`: called as `progress(i, len(hs), h)` after each point.

    **Returns:** an `OrderEstimate`.

    **Raises:** `InputError` for a bad grid or kind; `MeasurementError` when
    fewer than 3 points remain above the floor and inside the region.
    """
    if kind not in ("local", "global"):
        raise InputError(f"`kind` must be 'local' or 'global', got {kind!r}.")
    if kind == "global" and t_end is None:
        raise InputError("`t_end` is required for kind='global' (the time to compare at).")
    grid = check_step_grid(hs)
    example = f"lambda h: {type(make_flow).__name__}(..., h)"
    check_factory(make_flow, "make_flow", AbstractFlow, example)
    first_flow = make_flow(float(grid[0]))
    _checked_inputs(step, first_flow, y0, grid[0])
    expected_given = expected
    if expected is None:
        order = getattr(first_flow, "order", None)
        if order is None:
            raise InputError("`expected` is required when the flow has no `order` attribute.")
        expected = order + (2 if kind == "local" else 1)
    index = warn_if_unstable(step, y0, float(grid[-1]), args) if check_stability else math.nan
    errors, floors, notes, causes = [], [], [], []
    remarks = _kink_remarks(step, y0, grid, kind, args, t_end)
    if remarks and kind == "global" and expected_given is None:
        expected = min(expected, 2.0)  # one step across a schedule's kink: local error O(h^2)
    with warnings.catch_warnings():
        # Crossing a schedule's kink is said once, above and in `remarks`, not once per point.
        warnings.simplefilter("ignore", KinkWarning)
        for i, h in enumerate(grid):
            h = float(h)
            flow = first_flow if i == 0 else make_flow(h)
            num_steps = 1 if kind == "local" else _num_steps(step, h, args, t_end)
            note = region_problem(step, flow, y0, args)
            error = floor = math.nan
            cause = "region" if note else ""
            if not note:
                try:
                    m = _compare(step, flow, y0, h, num_steps, args, rtol, atol, on_slow_manifold)
                    error, floor, note = m.error, m.floor, m.kink
                    cause = "kink" if note else ""
                except DivergenceError as failure:
                    note, cause = str(failure), "diverged"
            errors.append(error)
            floors.append(floor)
            notes.append(note or "")
            causes.append(cause)
            if progress is not None:
                progress(i + 1, grid.size, h)
    errors, floors = np.array(errors), np.array(floors)
    left_out = np.array([bool(cause) for cause in causes])
    used = above_floor(errors, floors) & ~left_out
    causes = ["" if u else (c or "floor") for u, c in zip(used, causes)]
    for cause, what in (
        (
            "region",
            f"lie outside the region where {type(first_flow).__name__} describes "
            f"{type(step).__name__}",
        ),
        (
            "kink",
            "cross a kink of the map (relu, abs, max, a where on a comparison) during "
            "the compared step",
        ),
        (
            "diverged",
            "diverged (their iterates are not finite, or as far from the flow as the "
            "state is large)",
        ),
    ):
        hit = [i for i, c in enumerate(causes) if c == cause]
        if not hit:
            continue
        summary = f"{len(hit)} of {grid.size} points {what}"
        detail = f"the first, h={grid[hit[0]]:.4g}: {notes[hit[0]].rstrip('.')}"
        if not can_fit(grid, used):
            raise MeasurementError(
                f"{summary}, too few are left to fit an order of accuracy; {detail}."
            )
        warn_at_caller(
            f"{summary} and were left out (see `OrderEstimate.excluded`); {detail}.",
            StabilityWarning,
        )
    if not can_fit(grid, used):
        raise MeasurementError(
            f"only {int(used.sum())} of {grid.size} points lie above the round-off / solver "
            f"floor, fewer than {MIN_POINTS} spanning a factor {MIN_RANGE:g} (errors "
            f"{errors.tolist()}, floors {floors.tolist()}); use larger step sizes or tighter "
            "`rtol`/`atol`."
        )
    at_floor = causes.count("floor")
    if at_floor:
        warnings.warn(
            f"{at_floor} of {grid.size} points sit at the round-off / "
            "solver floor and were left out of the fit (see `OrderEstimate.excluded`).",
            RoundoffWarning,
            stacklevel=2,
        )
    slope, stderr, intercept = fit_slope(grid, errors, used)
    return OrderEstimate(
        kind=kind,
        map_name=type(step).__name__,
        flow_name=type(first_flow).__name__,
        hs=grid,
        errors=errors,
        floors=floors,
        used=used,
        slope=slope,
        slope_stderr=stderr,
        intercept=intercept,
        expected=float(expected),
        stability_index=index,
        t_end=None if t_end is None or kind == "local" else float(t_end),
        notes=tuple(notes),
        remarks=remarks,
        causes=tuple(causes),
    )


def _kink_remarks(step, y0, grid, kind, args, t_end) -> tuple[str, ...]:
    """A remark (and one `KinkWarning`) when some point's interval crosses a kink."""
    t0 = start_time(step, y0)
    crossed = set()
    for h in grid:
        num_steps = 1 if kind == "local" else _num_steps(step, float(h), args, t_end)
        end = t0 + num_steps * float(step.duration(float(h), args))
        crossed.update(kinks_between(step, t0, end))
    if not crossed:
        return ()
    remark = kink_message(tuple(sorted(crossed)))
    warn_at_caller(remark + ".", KinkWarning)
    return (remark,)
