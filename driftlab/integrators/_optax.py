r"""What backward error analysis needs from an optax transformation, checked on its jaxpr.

The modified flow of a map $\Phi_h$ is a series in $h$ at $h = 0$: it needs a
map that is smooth in the parameters, the optimiser state and $h$ near the
point, whose auxiliary state decays to a slow manifold. `check_update` reads
the traced `update` of a `GradientTransformation` and raises `InputError`,
naming the primitive and the line of the transformation, when:

- a primitive that is not smooth meets the gradient or the state (`sign` in
  `lion` and sign-SGD, `max` and `abs` in `adamax` and `sm3`);
- a switch on an order comparison of the data takes, at this point, a branch
  that does not pass the compared value through (an active
  `clip_by_global_norm`: $g \mapsto g\,c/\|g\|$); an inactive clip passes the
  update through and is smooth near the point;
- the point lies on an equality guard (a zero norm, a non-finite value);
- an auxiliary state does not decay: its Jacobian at $h = 0$ has eigenvalue 1
  (`adagrad`'s sum of squared gradients), so there is no slow manifold.

The checks on values run where the values are concrete (outside `jit`); the
structural ones (non-smooth primitives) also run at trace time.
"""

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from .._custom_types import Y
from .._errors import InputError
from ._jaxpr import walk


#: Primitives with a kink or a jump, rejected wherever they meet the data.
NON_SMOOTH = frozenset(
    {
        "sign",
        "abs",
        "floor",
        "ceil",
        "round",
        "reduce_max",
        "reduce_min",
        "argmax",
        "argmin",
        "sort",
        "rem",
        "cummax",
        "cummin",
        "top_k",
    }
)
#: Primitives that are smooth except where an argument crosses a constant.
_PIECEWISE = frozenset({"max", "min", "clamp"})
_ORDER = frozenset({"lt", "le", "gt", "ge"})
_LOGIC = frozenset({"and", "or", "not"})
#: An auxiliary entry with `|1 - d| <` this does not decay (no slow manifold).
DECAY_TOLERANCE = 1e-6


class _Tag(NamedTuple):
    data: bool  # depends on the gradient, the parameters or the float state
    ancestors: frozenset  # ids of the data values it was computed from (itself included)
    order: bool  # a predicate built from an order comparison of the data
    ident: int | None
    compared: object = None  # for an order comparison: the data value it tests, if known


_CONSTANT = _Tag(False, frozenset(), False, None)


def _not_smooth(reason: str, location: str) -> InputError:
    at = f" (at {location})" if location else ""
    return InputError(
        f"`make_optimiser`: the optax transformation is not smooth here: {reason}{at}. "
        "Backward error analysis expands the map in h around a point and needs it "
        "smooth in the parameters and the optimiser state there; see the optax page "
        "of the docs for which optimisers have a modified flow."
    )


def _smoothness_rule():
    ids = itertools.count()

    def rule(eqn, tags, values, location):
        name = eqn.primitive.name
        data = any(t.data for t in tags)
        if not data:
            return [_CONSTANT] * len(eqn.outvars)
        ident = next(ids)
        ancestors = frozenset().union(*(t.ancestors for t in tags)) | {ident}
        order, compared = False, None
        if name in NON_SMOOTH:
            raise _not_smooth(f"its update applies `{name}` to the gradient or state", location)
        if name in _PIECEWISE:
            _check_piecewise(name, tags, values, location)
        elif name in _ORDER:
            order = not _zero_guard(tags, values, location)
            compared = next((v for t, v in zip(tags, values) if t.data), None)
        elif name in _LOGIC:
            order = any(t.order for t in tags)
        elif name in ("eq", "ne", "is_finite") and values[0] is not None:
            result = np.asarray(eqn.primitive.bind(*values, **eqn.params))
            on_guard = result.any() if name == "eq" else not result.all()
            if on_guard:
                raise _not_smooth(
                    f"the point lies where `{name}` switches the update (e.g. a zero norm "
                    "or a non-finite value)",
                    location,
                )
        elif name == "select_n" and tags[0].data:
            _check_switch(tags, values, location)
        elif name in ("cond", "while") and tags[0].data:
            raise _not_smooth(f"its update branches on the data (`{name}`)", location)
        return [_Tag(True, ancestors, order, ident, compared)] * len(eqn.outvars)

    return rule


def _check_piecewise(name, tags, values, location):
    """`max(x, c)`, `min(x, c)`, `clamp(lo, x, hi)`: smooth only where `x` is strictly inside."""
    data_args = [i for i, t in enumerate(tags) if t.data]
    if len(data_args) > 1 and name != "clamp":
        raise _not_smooth(f"its update applies `{name}` to two data values", location)
    if any(v is None for v in values):
        return
    x = np.asarray(values[data_args[0]])
    if name == "clamp":
        lo, hi = np.asarray(values[0]), np.asarray(values[2])
        inside = (lo < x) & (x < hi)
    else:
        other = np.asarray(values[1 - data_args[0]])
        inside = x > other if name == "max" else x < other
    if not inside.all():
        raise _not_smooth(f"`{name}` is active: it cuts the data off at a constant", location)


def _zero_guard(tags, values, location) -> bool:
    """Whether an order comparison tests a data value against zero (`t > 0` before `rsqrt(t)`).

    Such a guard is smooth wherever the value is not zero; at a zero it raises.
    """
    constants = [v for t, v in zip(tags, values) if not t.data]
    if len(constants) != 1 or constants[0] is None or np.any(np.asarray(constants[0]) != 0):
        return False
    x = next(v for t, v in zip(tags, values) if t.data)
    if x is not None and np.any(np.asarray(x) == 0):
        raise _not_smooth("a value tested against zero is zero at this point", location)
    return True


def _check_switch(tags, values, location):
    """A `select_n` on an order comparison must pass the compared value through here.

    Passing through: the branch taken is a value the comparison was computed
    from (`where(norm < c, g, g * c / norm)`), or equals the value compared
    (`where(norm <= c, c, norm)`).
    """
    predicate = tags[0]
    if not predicate.order or values[0] is None:
        return
    taken = np.unique(np.asarray(values[0]).astype(int))
    for index in taken:
        case, value = tags[1 + index], values[1 + index]
        ancestor = case.ident is not None and case.ident in predicate.ancestors
        same = (
            predicate.compared is not None
            and value is not None
            and np.shape(value) == np.shape(predicate.compared)
            and np.allclose(value, predicate.compared, rtol=1e-12, atol=0)
        )
        if not (ancestor or same):
            raise _not_smooth(
                "a switch on a comparison of the gradient or state (`select_n`) takes the "
                "branch that changes the update at this point (an active clip)",
                location,
            )


def check_update(
    optimiser: optax.GradientTransformation, grads: Y, opt_state: Y, params: Y
) -> None:
    """Raise `InputError` where `optimiser.update` at this point has no modified flow."""
    inputs = (grads, opt_state, params)
    leaves, treedef = jtu.tree_flatten(inputs)

    def update(*leaves):
        grads, opt_state, params = jtu.tree_unflatten(treedef, leaves)
        return optimiser.update(grads, opt_state, params)

    closed = jax.make_jaxpr(update)(*leaves)
    # Inputs get negative ids, so that a switch can tell that it passes one through.
    in_tags = [
        _Tag(True, frozenset({-1 - i}), False, -1 - i)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        else _CONSTANT
        for i, leaf in enumerate(leaves)
    ]
    walk(closed, in_tags, _smoothness_rule(), _CONSTANT, leaves, evaluate=True)
    _check_decay(optimiser, grads, opt_state, params)


def _check_decay(optimiser, grads, opt_state, params):
    """Every float entry of the optax state must decay at `h = 0`: no eigenvalue 1."""
    paths_leaves, treedef = jtu.tree_flatten_with_path(opt_state)
    inexact = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for _, leaf in paths_leaves]
    if not any(inexact):
        return
    leaves = [leaf for _, leaf in paths_leaves]

    def state_map(floats):
        it = iter(floats)
        state = jtu.tree_unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, inexact)])
        new_state = optimiser.update(grads, state, params)[1]
        return [x for x, f in zip(jtu.tree_leaves(new_state), inexact) if f]

    floats = [leaf for leaf, f in zip(leaves, inexact) if f]
    _, rates = jax.jvp(state_map, (floats,), (jtu.tree_map(jnp.ones_like, floats),))
    paths = [path for (path, _), f in zip(paths_leaves, inexact) if f]
    for path, rate in zip(paths, rates):
        if isinstance(rate, jax.core.Tracer):
            return
        if np.size(rate) and np.all(np.abs(1 - np.asarray(rate)) < DECAY_TOLERANCE):
            raise InputError(
                f"`make_optimiser`: no slow manifold. The optax state "
                f"`opt_state{jtu.keystr(path)}` does not decay (its Jacobian at h = 0 has "
                "eigenvalue 1: an accumulator, as in adagrad's sum of squared gradients), "
                "so it is never slaved to the parameters and the map has no modified flow "
                "of the parameters alone."
            )
