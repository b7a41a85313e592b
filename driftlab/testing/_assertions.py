"""Assertions that turn a backward-error derivation into a property test, showing the evidence."""

import math
import warnings
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree

from .._custom_types import Args, Y
from .._errors import InputError, RoundoffWarning
from .._symmetry import GRADIENT_TOLERANCE
from .._tree import tree_scale
from ..analysis import (
    GradientStructure,
    is_gradient_field,
    order_of_accuracy,
    OrderEstimate,
)
from ..flows import ModifiedFlow
from ..integrators import AbstractStepMap


#: The step sizes `assert_order` measures at when none are given (for `h * lambda_max <~ 1`).
DEFAULT_HS = (1 / 8, 1 / 16, 1 / 32, 1 / 64)
#: `hand = c * reference` is reported as a wrong constant when it holds to this relative accuracy.
_PROPORTIONAL = 1e-6


def _locate(tree, index: int) -> str:
    """Name entry `index` of `ravel_pytree(tree)` by its leaf's path and position in the leaf."""
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        size = np.size(leaf)
        if index < size:
            where = np.unravel_index(index, np.shape(leaf)) if np.ndim(leaf) else ()
            return f"y{jtu.keystr(path)}[{', '.join(map(str, where))}]"
        index -= size
    raise AssertionError("index outside the PyTree")  # unreachable: index comes from the tree


def _factor(ratio: float) -> str:
    """`ratio` to 6 digits, or as many as it takes to tell it from the nearest integer (a
    factor 1 + 1e-8 is not "1 times"), unless it is that integer up to round-off."""
    nearest = round(ratio)
    if abs(ratio - nearest) <= 1e-12 * max(1.0, abs(ratio)):
        return f"{ratio:.6g}"
    return next(
        (f"{ratio:.{d}g}" for d in (6, 9, 12) if float(f"{ratio:.{d}g}") != nearest),
        f"{ratio:.15g}",
    )


class _Comparison:
    """The difference between two PyTrees of the same structure, summarised as evidence."""

    def __init__(self, actual: Y, expected: Y):
        a = np.asarray(ravel_pytree(actual)[0])
        e = np.asarray(ravel_pytree(expected)[0])
        if a.shape != e.shape:
            raise InputError(f"cannot compare a state of size {a.size} with one of size {e.size}.")
        self.actual_norm = float(np.linalg.norm(a))
        self.expected_norm = float(np.linalg.norm(e))
        self.error = float(np.linalg.norm(a - e))
        worst = int(np.argmax(np.abs(a - e))) if a.size else 0
        self.worst = f"{_locate(expected, worst)}: {a[worst]:.6g} vs {e[worst]:.6g}"
        # The least-squares c in `actual ~ c * expected`; a clean multiple flags a wrong constant.
        self.ratio = float(a @ e / (e @ e)) if e @ e > 0 else math.nan
        self.proportional = bool(
            e @ e > 0 and np.linalg.norm(a - self.ratio * e) <= _PROPORTIONAL * self.actual_norm
        )

    def relative_error(self) -> float:
        return self.error / max(self.expected_norm, self.actual_norm, np.finfo(float).tiny)

    def diagnosis(self, what: str, reference: str) -> str:
        if not self.proportional:
            return (
                f"{what} is not a multiple of {reference}; the largest difference is at "
                f"{self.worst}."
            )
        kind = "a wrong sign" if np.isclose(self.ratio, -1.0) else "a wrong constant"
        return f"{what} is {_factor(self.ratio)} times {reference}: {kind}."


def assert_order(
    step: AbstractStepMap,
    make_flow: Callable[[float], object],
    y0: Y,
    expected: float | None = None,
    kind: str = "local",
    args: Args = None,
    hs: Sequence[float] | None = None,
    *,
    tolerance: float = 0.3,
    t_end: float = 1.0,
) -> OrderEstimate:
    r"""Assert that `make_flow(h)` follows `step` with the expected order of accuracy.

    Measures $\|\Phi_h^n(y_0) - \varphi_{nh}(y_0)\|$ over the step sizes `hs`
    with `driftlab.order_of_accuracy` (one step for `kind="local"`, time `t_end`
    for `"global"`) and fits the log-log slope, leaving out points at the
    round-off / solver floor. An order-$p$ flow has slope $p + 2$ (local) or
    $p + 1$ (global). A wrong constant in $f_p$ leaves an $O(h^{p+1})$ (local)
    term, so the slope drops by one where that term dominates, i.e. at the
    small end of `hs`; `assert_coefficients_match` sees it at any size.

    **Arguments:**

    - `step`: the map; `make_flow(h)`: the flow for step size `h`.
    - `y0`: the initial state (of the map; the flow starts from its parameters).
    - `expected`: the slope; defaults to the flow's `order` plus 2 (local) or 1.
    - `kind`: `"local"` or `"global"`; `t_end`: the time of a global measurement.
    - `args`: the data; `hs`: step sizes (default `DEFAULT_HS`; draw them inside
      a region with `driftlab.testing.step_size_grids`).
    - `tolerance`: the largest accepted $|\text{slope} - \text{expected}|$.

    **Returns:** the `driftlab.OrderEstimate`, when the slope agrees.

    **Raises:** `AssertionError` showing the error table and the fitted and
    expected slopes when it does not; `driftlab.MeasurementError` when too few
    points lie above the floor to measure anything.
    """
    with warnings.catch_warnings():
        # The estimate's table marks the points left at the floor; no need to warn too.
        warnings.simplefilter("ignore", RoundoffWarning)
        estimate = order_of_accuracy(
            step,
            make_flow,
            y0,
            DEFAULT_HS if hs is None else hs,
            kind,
            args,
            t_end=t_end if kind == "global" else None,
            expected=expected,
        )
    if not estimate.agrees(tolerance):
        raise AssertionError(
            f"{estimate.flow_name} does not follow {estimate.map_name} to the expected order: "
            f"fitted {kind} slope {estimate.slope:.3f}, expected {estimate.expected:g} "
            f"(tolerance {tolerance:g}).\n{estimate}"
        )
    return estimate


def taylor_coefficients_in_h(
    make_flow: Callable[[float], object], y: Y, args: Args, order: int
) -> list[Y]:
    r"""$[f_0(y), \ldots, f_p(y)]$ with $f_h(y) = \sum_k h^k f_k(y) + O(h^{p+1})$, by AD in $h$.

    `make_flow(h)(0, y, args)` is differentiated `k` times in `h` at `h = 0`
    (nested forward mode: cheap for the small orders hand-written flows have)
    and divided by $k!$. `make_flow` must accept a traced `h`, as any flow whose
    `h` is an array field does.
    """
    derivatives = [lambda h: make_flow(h)(0.0, y, args)]
    for _ in range(order):
        derivatives.append(lambda h, d=derivatives[-1]: jax.jvp(d, (h,), (jnp.ones_like(h),))[1])
    h0 = jnp.zeros((), jnp.float64)
    return [tree_scale(1.0 / math.factorial(k), d(h0)) for k, d in enumerate(derivatives)]


@eqx.filter_jit
def _automatic_coefficients(step: AbstractStepMap, order: int, y: Y, args: Args) -> list[Y]:
    """`ModifiedFlow(step, h, order).coefficients(y, args)` (independent of `h`), compiled once
    per map and shape: across hypothesis examples only the values change."""
    return ModifiedFlow(step, 0.0, order).coefficients(y, args)


def assert_coefficients_match(
    make_flow: Callable[[float], object],
    step: AbstractStepMap,
    order: int,
    y: Y,
    args: Args = None,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-14,
) -> list[Y]:
    r"""Assert that a hand-written flow expands in $h$ as the automatic modified flow of `step`.

    Compares, term by term for $k = 0, \ldots, p$, the Taylor coefficients in $h$
    of `make_flow(h)(0, y, args)` (`taylor_coefficients_in_h`) with
    `driftlab.flows.ModifiedFlow(step, h, order).coefficients(y, args)`, the
    backward-error coefficients of the map. This is exact, not a fit: a wrong
    constant or sign in $f_k$ fails at every $y$ and every problem. The
    message shows each coefficient's norms and relative difference, the worst
    entry, and, when the hand-written $f_k$ is a multiple $c$ of the automatic
    one, $c$ (1.1 for a constant 10% off, -1 for a flipped sign).

    **Arguments:**

    - `make_flow`: `h -> flow`, the hand-written flow for step size `h`.
    - `step`: the map it claims to model; `order`: the highest $k$ compared.
    - `y`, `args`: the parameters and data to compare at (for maps with
      auxiliary state, `ModifiedFlow` places it on the slow manifold over `y`).
    - `rtol`, `atol`: coefficient $k$ passes when $\|f_k^{hand} - f_k^{auto}\|
      \le \text{rtol}\,\max(\|f_k^{hand}\|, \|f_k^{auto}\|) + \text{atol}$.

    **Returns:** the automatic coefficients.

    **Raises:** `AssertionError` with the coefficient table when a term differs.
    """
    if not (isinstance(order, int) and order >= 0):
        raise InputError(f"`order` must be a non-negative integer, got {order!r}.")
    hand = taylor_coefficients_in_h(make_flow, y, args, order)
    auto = _automatic_coefficients(step, order, y, args)
    comparisons = [_Comparison(a, b) for a, b in zip(hand, auto)]
    failed = [
        k
        for k, c in enumerate(comparisons)
        if not c.error <= rtol * max(c.actual_norm, c.expected_norm) + atol
    ]
    if failed:
        rows = [
            f"{k:>3} {c.actual_norm:14.6e} {c.expected_norm:14.6e} {c.relative_error():12.3e} "
            f"{c.ratio:12.6g}  {'FAIL' if k in failed else 'ok'}"
            for k, c in enumerate(comparisons)
        ]
        worst = max(failed, key=lambda k: comparisons[k].relative_error())
        raise AssertionError(
            f"the expansion in h of {type(make_flow(1.0)).__name__} differs from the modified "
            f"flow of {type(step).__name__} in f_{', f_'.join(map(str, failed))} "
            f"(rtol {rtol:g}).\n"
            f"{'k':>3} {'|f_k| hand':>14} {'|f_k| auto':>14} {'rel. diff':>12} "
            f"{'hand/auto':>12}\n" + "\n".join(rows) + "\n"
            f"worst: f_{worst}; "
            + comparisons[worst].diagnosis(f"the hand-written f_{worst}", "the automatic one")
        )
    return auto


def assert_gradient_field(
    flow: Callable,
    y: Y,
    args: Args = None,
    *,
    tolerance: float = GRADIENT_TOLERANCE,
    num_probes: int = 4,
    key=None,
) -> GradientStructure:
    r"""Assert that `flow` is a gradient field at `y`: its Jacobian $J$ is symmetric.

    A field $f = -\nabla\tilde L$ has $J = -\nabla^2\tilde L$, symmetric; a
    rotation (a bilinear game) or the antisymmetric part of an exact-batch SGD
    flow is not. Matrix-free, with `driftlab.is_gradient_field`: for
    `num_probes` random pairs $(u, v)$ it compares $u^\top J v$ with
    $v^\top J u$.

    **Arguments:** `flow`, called as `flow(t, y, args)`; `y`, `args`: where to
    test; `tolerance`: the largest accepted relative asymmetry
    $\|J - J^\top\|_F / (\|J + J^\top\|_F + \|J - J^\top\|_F)$; `num_probes`;
    `key`, a JAX PRNG key (default `jax.random.key(0)`).

    **Returns:** the `driftlab.analysis.GradientStructure` measured.

    **Raises:** `AssertionError` showing the measured asymmetry (per
    coefficient for a `ModifiedFlow`) when the Jacobian is not symmetric.
    """
    structure = is_gradient_field(
        flow, y, args, num_probes=num_probes, key=key, tolerance=tolerance
    )
    if not structure.is_gradient:
        raise AssertionError(
            f"{type(flow).__name__} is not a gradient field at y: its Jacobian is not "
            f"symmetric (tolerance {tolerance:g}), so no modified loss has it as its "
            f"negative gradient.\n{structure}"
        )
    return structure


def assert_modified_loss(
    flow: Callable,
    loss_fn: Callable[[Y, Args], object] | None,
    y: Y,
    args: Args = None,
    *,
    rtol: float = 1e-10,
) -> None:
    r"""Assert that the field of `flow` is minus the gradient of a claimed loss $\tilde L_h$.

    **Arguments:** `flow`, called as `flow(t, y, args)`; `loss_fn`, the claimed
    $\tilde L_h$ as `loss_fn(y, args)` (`None`: the flow's own `modified_loss`);
    `y`, `args`: where to compare; `rtol`: relative to $\|\nabla\tilde L_h\|$.

    **Raises:** `AssertionError` showing the two norms, the relative difference,
    the worst entry and, when the field is a multiple of $-\nabla\tilde L_h$, the
    factor (e.g. $-1$: the loss has the wrong sign).
    """
    loss_fn = flow.modified_loss if loss_fn is None else loss_fn
    field = flow(0.0, y, args)
    minus_grad = jtu.tree_map(jnp.negative, jax.grad(loss_fn)(y, args))
    comparison = _Comparison(field, minus_grad)
    if comparison.relative_error() > rtol:
        raise AssertionError(
            f"the field of {type(flow).__name__} is not minus the gradient of the claimed "
            f"loss: |f| = {comparison.actual_norm:.6e}, |grad L| = "
            f"{comparison.expected_norm:.6e}, relative difference "
            f"{comparison.relative_error():.3e} > rtol {rtol:g}.\n"
            + comparison.diagnosis("the field", "minus the gradient of the loss")
        )
