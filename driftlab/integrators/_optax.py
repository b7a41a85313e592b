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
- the point lies on an equality guard (a zero norm, a non-finite value), or a
  root is taken of an exact zero (`adam`'s $\sqrt{\nu}$ where a gradient entry
  vanishes: use `eps_root`);
- an auxiliary state does not decay: its Jacobian at $h = 0$ has eigenvalue 1
  (`adagrad`'s sum of squared gradients), so there is no slow manifold.

The checks on values run where the values are concrete (outside `jit`); the
structural ones (non-smooth primitives) also run at trace time.
"""

import itertools
from typing import NamedTuple

import equinox as eqx
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
#: Roots: smooth except at zero.
_ROOTS = frozenset({"sqrt", "rsqrt", "cbrt"})
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


def _known(value) -> bool:
    return value is not None and not isinstance(value, jax.core.Tracer)


def _smoothness_rule(problems: list):
    """The `walk` rule: raises for structural problems, appends `(flag, error)` for the rest.

    Flags are boolean arrays computed from the values (traced inside `check_update`'s jit).
    """
    ids = itertools.count()

    def flag(condition, reason, location):
        problems.append((condition, _not_smooth(reason, location)))

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
        if name in _ROOTS:
            flag(
                jnp.any(values[0] == 0),
                f"`{name}` of a value that is exactly zero at this point (a gradient entry "
                "that vanishes, e.g. at a dead input; optax's `eps_root` moves eps inside "
                "the root, which is smooth at zero)",
                location,
            )
        elif name in _PIECEWISE:
            flag(
                _piecewise_active(name, tags, values, location),
                f"`{name}` is active: it cuts the data off at a constant",
                location,
            )
        elif name in _ORDER:
            data_value = next(v for t, v in zip(tags, values) if t.data)
            if _against_zero(tags, values):
                # A guard such as `t > 0` before `rsqrt(t)`: smooth wherever t != 0.
                flag(jnp.any(data_value == 0), "a value tested against zero is zero", location)
            else:
                order, compared = True, data_value
        elif name in _LOGIC:
            order = any(t.order for t in tags)
        elif name in ("eq", "ne", "is_finite"):
            result = eqn.primitive.bind(*values, **eqn.params)
            flag(
                jnp.any(result) if name == "eq" else jnp.logical_not(jnp.all(result)),
                f"the point lies where `{name}` switches the update (e.g. a zero norm or "
                "a non-finite value)",
                location,
            )
        elif name == "select_n" and tags[0].order:
            flag(
                _switch_active(tags, values),
                "a switch on a comparison of the gradient or state (`select_n`) takes the "
                "branch that changes the update at this point (an active clip)",
                location,
            )
        elif name in ("cond", "while") and tags[0].data:
            raise _not_smooth(f"its update branches on the data (`{name}`)", location)
        return [_Tag(True, ancestors, order, ident, compared)] * len(eqn.outvars)

    return rule


def _piecewise_active(name, tags, values, location):
    """`max(x, c)`, `min(x, c)`, `clamp(lo, x, hi)`: smooth only where `x` is strictly inside."""
    data_args = [i for i, t in enumerate(tags) if t.data]
    if len(data_args) > 1 and name != "clamp":
        raise _not_smooth(f"its update applies `{name}` to two data values", location)
    x = values[data_args[0]]
    if name == "clamp":
        inside = (values[0] < x) & (x < values[2])
    else:
        other = values[1 - data_args[0]]
        inside = x > other if name == "max" else x < other
    return jnp.logical_not(jnp.all(inside))


def _against_zero(tags, values) -> bool:
    """Whether an order comparison tests one data value against a known constant zero."""
    constants = [v for t, v in zip(tags, values) if not t.data]
    return len(constants) == 1 and _known(constants[0]) and not np.any(np.asarray(constants[0]))


def _switch_active(tags, values):
    """Whether a `select_n` on an order comparison takes a branch that is not a pass-through.

    Passing through: the branch taken is a value the comparison was computed
    from (`where(norm < c, g, g * c / norm)`), or equals the value compared
    (`where(norm <= c, c, norm)`).
    """
    predicate, which = tags[0], values[0].astype(int)
    active = jnp.asarray(False)
    for index, (case, value) in enumerate(zip(tags[1:], values[1:])):
        if case.ident is not None and case.ident in predicate.ancestors:
            continue
        taken = jnp.any(which == index)
        if predicate.compared is not None and jnp.shape(value) == jnp.shape(predicate.compared):
            same = jnp.allclose(value, predicate.compared, rtol=1e-12, atol=0)
            taken = taken & jnp.logical_not(same)
        active = active | taken
    return active


def check_update(
    optimiser: optax.GradientTransformation, grads: Y, opt_state: Y, params: Y
) -> None:
    """Raise `InputError` where `optimiser.update` at this point has no modified flow.

    Structural problems raise while tracing; the ones that depend on values are
    computed in one compiled call and raise when the values are concrete.
    """
    leaves, treedef = jtu.tree_flatten((grads, opt_state, params))

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
    errors = []

    def flags_and_rates(leaves):
        problems = []
        walk(closed, in_tags, _smoothness_rule(problems), _CONSTANT, leaves, evaluate=True)
        errors.extend(error for _, error in problems)
        rates = _decay_rates(optimiser, *jtu.tree_unflatten(treedef, leaves))
        return [f for f, _ in problems], rates

    flags, (paths, rates) = eqx.filter_jit(flags_and_rates)(leaves)
    if any(isinstance(f, jax.core.Tracer) for f in [*flags, *rates]):
        return
    for flag, error in zip(flags, errors):
        if bool(flag):
            raise error
    for path, rate in zip(paths, rates):
        if np.size(rate) and np.all(np.abs(1 - np.asarray(rate)) < DECAY_TOLERANCE):
            raise InputError(
                f"`make_optimiser`: no slow manifold. The optax state "
                f"`opt_state{path}` does not decay (its Jacobian at h = 0 has "
                "eigenvalue 1: an accumulator, as in adagrad's sum of squared gradients), "
                "so it is never slaved to the parameters and the map has no modified flow "
                "of the parameters alone."
            )


def _decay_rates(optimiser, grads, opt_state, params):
    """The diagonal of the Jacobian of the float optax state at `h = 0` (probed with ones)."""
    paths_leaves, treedef = jtu.tree_flatten_with_path(opt_state)
    inexact = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for _, leaf in paths_leaves]
    leaves = [leaf for _, leaf in paths_leaves]

    def state_map(floats):
        it = iter(floats)
        state = jtu.tree_unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, inexact)])
        new_state = optimiser.update(grads, state, params)[1]
        return [x for x, f in zip(jtu.tree_leaves(new_state), inexact) if f]

    floats = [leaf for leaf, f in zip(leaves, inexact) if f]
    _, rates = jax.jvp(state_map, (floats,), (jtu.tree_map(jnp.ones_like, floats),))
    paths = [jtu.keystr(path) for (path, _), f in zip(paths_leaves, inexact) if f]
    return paths, rates
