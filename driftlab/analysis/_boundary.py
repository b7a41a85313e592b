r"""The boundary layer of a flow: its one-step error along the map's own iterates, step by step.

A flow of a map with auxiliary state describes the iterates once that state has
settled on the slow manifold. From the map's own start (Adam's zero moments and
step count 0) the iterates first cross a boundary layer of $O(1/(1 - b))$ steps, a
time $O(h)$ when $b$ is held fixed as $h \to 0$, where the one-step error of the
flow is larger than its order says. `boundary_layer` measures it: the defect
$d_n = \|\theta_{n+1} - \varphi_h(\theta_n)\|$ of the flow started from the $n$-th
iterate's parameters, for every step $n$ and several $h$, and the local order
$\log_2(d_n(h) / d_n(h/2))$ at each step index.
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Args, Y
from .._errors import InputError
from .._tree import split, tree_norm, tree_sub
from ..integrators import AbstractStepMap, iterate, solve
from ..integrators._solve import DEFAULT_ATOL, DEFAULT_RTOL
from ._error import _checked_inputs, start_time
from ._order import check_step_grid


class BoundaryLayer(eqx.Module):
    r"""One-step errors of a flow along a map's iterates from its start, step by step.

    **Attributes:**

    - `hs`: the step sizes (increasing); `steps`: the step indices $0..n-1$.
    - `defects`: `defects[i, n]` $= \|\theta_{n+1} - \varphi_{h_i}(\theta_n)\|$ at `hs[i]`.
    - `orders`: per step index, the log-log slope of the defect between consecutive
      step sizes, fitted over `hs` (NaN where a defect is zero).
    - `expected`: the flow's local order $p + 2$.
    - `order_from`: the first step index from which every later `orders` entry is
      within `tolerance` of `expected` (`None` if none): where the boundary layer ends.
    """

    hs: np.ndarray
    steps: np.ndarray
    defects: np.ndarray
    orders: np.ndarray
    expected: float
    order_from: int | None
    tolerance: float

    def __str__(self) -> str:
        lines = [f"{'step':>6} " + " ".join(f"{'h=' + format(h, '.3g'):>12}" for h in self.hs)]
        lines[0] += f" {'order':>8}"
        for n in self.steps:
            row = " ".join(f"{d:12.4e}" for d in self.defects[:, n])
            lines.append(f"{n:6d} {row} {self.orders[n]:8.3f}")
        lines.append(
            f"local order {self.expected:g} holds (to {self.tolerance:g}) from step "
            f"{self.order_from}"
            if self.order_from is not None
            else f"local order {self.expected:g} is not reached within {self.steps.size} steps"
        )
        return "\n".join(lines)


def boundary_layer(
    step: AbstractStepMap,
    make_flow: Callable[[float], object],
    y0: Y,
    hs: Sequence[float],
    num_steps: int,
    args: Args = None,
    *,
    expected: float | None = None,
    tolerance: float = 0.3,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> BoundaryLayer:
    r"""The one-step error of `make_flow(h)` along the iterates of `step` from `y0`.

    The map runs from `y0` as given (no slow-manifold start: for Adam, zero moments
    and count 0), and at each step $n$ the flow is solved over one step from the
    parameters of iterate $n$ (at its time $\tau_n$ for a time-dependent map). At a
    fixed step index the defects of an order-$p$ flow fall like $h^{p+2}$ once the
    layer has passed; inside it the auxiliary state is off the slow manifold by an
    amount set by the step index, not by $h$, and they fall more slowly.

    **Arguments:** `step`, `make_flow(h)`, `y0` (the map's starting state), `hs` (at
    least 3 step sizes), `num_steps`; `expected` (default: the flow's `order` + 2) and
    `tolerance` for `order_from`; the solver's `rtol`, `atol`.

    **Returns:** a `BoundaryLayer`.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"`num_steps` must be a positive integer, got {num_steps!r}.")
    grid = check_step_grid(hs)
    first_flow = make_flow(float(grid[0]))
    _checked_inputs(step, first_flow, y0, grid[0])
    if expected is None:
        expected = first_flow.order + 2
    defects = np.empty((grid.size, num_steps))
    for i, h in enumerate(grid):
        h = float(h)
        flow = first_flow if i == 0 else make_flow(h)
        ys = iterate(step, y0, h, num_steps, args)
        params = split(step.parameters(ys))[0]
        static = split(step.parameters(y0))[1]
        t0 = start_time(step, y0)
        for n in range(num_steps):
            at = lambda k: eqx.combine(jtu.tree_map(lambda leaf: leaf[k], params), static)
            tn = t0 + n * float(step.duration(h, args))
            end = solve(flow, at(n), tn + h, args=args, t0=tn, rtol=rtol, atol=atol)
            defects[i, n] = float(tree_norm(tree_sub(at(n + 1), end)))
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log2(defects)
        slopes = np.polyfit(np.log2(grid), np.where(np.isfinite(logs), logs, 0.0), 1)[0]
    orders = np.where(np.all(np.isfinite(logs), axis=0), slopes, np.nan)
    good = np.abs(orders - expected) <= tolerance
    bad = np.flatnonzero(~good)
    order_from = 0 if bad.size == 0 else (int(bad[-1]) + 1 if bad[-1] + 1 < num_steps else None)
    return BoundaryLayer(
        hs=grid,
        steps=np.arange(num_steps),
        defects=defects,
        orders=orders,
        expected=float(expected),
        order_from=order_from,
        tolerance=float(tolerance),
    )
