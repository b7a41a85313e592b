r"""Which side of each kink a map is on: its branch pattern, read off the traced map.

A loss built from `relu`, `abs`, `max`, or a `where` on a comparison is smooth
almost everywhere, so backward error analysis applies between its kinks: the
modified flow of gradient descent on a ReLU network is the flow of the network
with its activation pattern frozen. What breaks the series is a kink *crossed*
while the map or the flow moves: on one side of a kink the loss is one smooth
function, on the other another, and the error over a step that crosses picks up
a term of lower order than the flow's. The branch pattern of a state records,
for every primitive with a kink or a jump that depends on the state (walked
through the jaxpr of the map, gradients included, as `check_update` walks an
optax update), which branch each entry takes:

- `max(x, y)`, `min(x, y)`: whether `x > y` (`x < y`); `clamp(lo, x, hi)`: which
  of the three pieces;
- `abs`, `sign`: the sign of the argument; `floor`, `ceil`, `round`: the value;
- an order or equality comparison (what `where`/`select_n` switches on): its result;
- `reduce_max`/`reduce_min`, `argmax`/`argmin`, `sort`, `cummax`/`cummin`: which
  entry is selected.

Two states on the same smooth piece have equal patterns; a step whose start and
end patterns differ has crossed a kink. Only kinks that reach the map's output
count: not dead code (the leftovers of a derivative), and not values that reach it
only through `stop_gradient` (the shift in `logsumexp` and `log_softmax`, whose
result does not depend on it).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.extend import core as jex_core

from .._custom_types import Args, RealScalarLike, Y
from .._tree import split
from ._jaxpr import _called_jaxpr, walk
from ._maps import AbstractStepMap
from ._optax import _ORDER, _PIECEWISE, NON_SMOOTH


#: Comparisons whose result switches a branch: order and equality.
_SWITCHES = _ORDER | {"eq", "ne"}
#: Reductions that select an entry: the pattern is the index selected.
_SELECTING = {"reduce_max": jnp.argmax, "reduce_min": jnp.argmin}


class Kink(NamedTuple):
    """One primitive with a kink: its name and where the map's code issued it."""

    primitive: str
    location: str


def _selected(select, operand, axes):
    """The index `select` (argmax/argmin) picks over `axes` of `operand`, per remaining entry."""
    kept = [a for a in range(operand.ndim) if a not in axes]
    moved = jnp.transpose(operand, (*kept, *axes))
    flat = moved.reshape(*moved.shape[: len(kept)], -1)
    return select(flat, axis=-1)


def _branch(eqn, values):
    """The branch pattern of one primitive with a kink or a jump, from its input values."""
    name, params = eqn.primitive.name, eqn.params
    if name == "clamp":
        low, x, high = values
        return (x > low).astype(jnp.int8) + (x >= high).astype(jnp.int8)
    if name in ("max", "min"):
        x, y = values
        return x > y if name == "max" else x < y
    if name in ("abs", "sign"):
        return jnp.sign(values[0])
    if name in ("floor", "ceil", "round"):
        return eqn.primitive.bind(*values, **params)
    if name == "rem":
        return jnp.floor(values[0] / values[1])
    if name in _SWITCHES:
        return eqn.primitive.bind(*values, **params)
    if name in _SELECTING:
        return _selected(_SELECTING[name], values[0], tuple(params["axes"]))
    if name in ("argmax", "argmin"):
        return eqn.primitive.bind(*values, **params)
    if name in ("cummax", "cummin"):
        return eqn.primitive.bind(*values, **params) == values[0]
    if name == "sort":
        return jnp.argsort(values[0], axis=params["dimension"])
    if name == "top_k":
        return eqn.primitive.bind(*values, **params)[1]
    return None


#: Every primitive `_branch` reads a pattern from.
KINKED = NON_SMOOTH | _PIECEWISE | _SWITCHES


def _reaching(closed, out_live: list[bool], live: set) -> list[bool]:
    """Which inputs of `closed` reach its `out_live` outputs other than through `stop_gradient`.

    Adds to `live` the ids of the equations (nested calls included) that do.
    """
    jaxpr = getattr(closed, "jaxpr", closed)
    needed = {v for v, keep in zip(jaxpr.outvars, out_live) if keep and not _is_literal(v)}
    for eqn in reversed(jaxpr.eqns):
        outs = [v in needed for v in eqn.outvars]
        if not any(outs) or eqn.primitive.name == "stop_gradient":
            continue
        live.add(id(eqn))
        sub = _called_jaxpr(eqn)
        ins = _reaching(sub, outs, live) if sub is not None else [True] * len(eqn.invars)
        needed.update(v for v, keep in zip(eqn.invars, ins) if keep and not _is_literal(v))
    return [v in needed for v in jaxpr.invars]


def _is_literal(atom) -> bool:
    return isinstance(atom, jex_core.Literal)


def _pattern_rule(kinks: list, patterns: list, live: set):
    """The `walk` rule: a tag says whether a value depends on the state; records patterns."""

    def rule(eqn, tags, values, location):
        depends = any(tags)
        if depends and id(eqn) in live and eqn.primitive.name in KINKED:
            pattern = _branch(eqn, values)
            if pattern is not None:
                kinks.append(Kink(eqn.primitive.name, location))
                patterns.append(pattern)
        return [depends] * len(eqn.outvars)

    return rule


def _patterns(step, y, h, args):
    arrays, static = split(y)
    leaves, treedef = jtu.tree_flatten(arrays)

    def map_leaves(*leaves):
        return jtu.tree_leaves(
            split(step(eqx.combine(jtu.tree_unflatten(treedef, leaves), static), h, args))[0]
        )

    closed = jax.make_jaxpr(map_leaves)(*leaves)
    in_tags = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]
    live = set()
    _reaching(closed, [True] * len(closed.jaxpr.outvars), live)
    kinks, patterns = [], []
    walk(closed, in_tags, _pattern_rule(kinks, patterns, live), False, leaves, evaluate=True)
    return kinks, patterns


@eqx.filter_jit
def _branch_patterns(step, y, h, args):
    return _patterns(step, y, h, args)[1]


def kinks(step: AbstractStepMap, y: Y, h: RealScalarLike, args: Args) -> list[Kink]:
    """The primitives with a kink or a jump that the map applies to its state (trace only)."""
    found = []

    def trace(*inputs):
        names, patterns = _patterns(*inputs)
        found.extend(names)
        return patterns

    eqx.filter_eval_shape(trace, step, y, h, args)
    return found


def crossed_kinks(
    step: AbstractStepMap, start: Y, ends: list[Y], h: RealScalarLike, args: Args
) -> str | None:
    r"""Which kinks of the map lie between the state `start` and any of the states `ends`.

    Compares the branch pattern (see the module) of the map at `start` with the
    pattern at each end. `None` when every entry of every kink takes the same
    branch at all of them (the map is one smooth function on a neighbourhood of
    each, and the crossing, if any, went back and forth in between, which the
    endpoints cannot see); otherwise how many entries switched and the first
    primitive that switched, with the line that issued it.
    """
    h = jnp.asarray(h)
    # A schedule's kinks in time are the map's declared `kinks()`, warned and measured as such:
    # only branches that the state moves across count here, so each end is read at the start's time.
    tau = step.time(start)
    if tau is not None:
        ends = [step.with_time(end, tau) for end in ends]
    reference = _branch_patterns(step, start, h, args)
    if not reference:
        return None
    switched = np.zeros(len(reference), dtype=int)
    for end in ends:
        for i, (a, b) in enumerate(zip(reference, _branch_patterns(step, end, h, args))):
            switched[i] = max(switched[i], int(np.sum(np.asarray(a) != np.asarray(b))))
    if not switched.any():
        return None
    names = kinks(step, start, h, args)
    first = names[int(np.flatnonzero(switched)[0])]
    at = f" at {first.location}" if first.location else ""
    total = sum(int(np.size(p)) for p in reference)
    return (
        f"a kink of the map is crossed: {int(switched.sum())} of {total} branch entries "
        f"switch between the start and the end of the step (the first: `{first.primitive}`"
        f"{at}); the map is a different smooth function on each side, so no modified "
        "flow holds across the step and the error does not follow its order; use a smaller h"
    )
