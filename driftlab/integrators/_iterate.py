import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Args, RealScalarLike, Y
from .._errors import (
    abstract_output,
    check_float64_tree,
    check_same_structure,
    check_step_size,
    DivergenceError,
    InputError,
    MeasurementError,
)
from .._tree import array_leaves, split
from ._maps import AbstractStepMap


def _all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in array_leaves(tree))


def _check_finite(ys: Y, step: AbstractStepMap, y0: Y, h: float, args: Args) -> Y:
    """Raise if the iterates are not finite: never hand back a NaN.

    A map whose update is non-finite at `y0` already at `h = 0` (a NaN gradient:
    `sqrt` or `log` of a negative loss; a negative second moment under a square
    root) raises `MeasurementError` saying so; otherwise the iterates diverged
    or overflowed and `DivergenceError` is raised.
    """
    if _all_finite(ys):
        return ys
    if not _all_finite(_advance(step, y0, jnp.zeros((), jnp.float64), jnp.asarray(1), args)):
        raise MeasurementError(
            f"the update of {type(step).__name__} is non-finite at the start state itself "
            "(already at h = 0, so this is not divergence): the gradient or the optimiser "
            "state there holds NaN or inf, e.g. a loss that takes `sqrt` or `log` of a "
            "negative value at these parameters, or a negative second moment under a "
            "square root. Check the loss and the state at `y0`."
        )
    raise DivergenceError(
        f"the iterates of {type(step).__name__} with h={h:g} became non-finite (they "
        "diverged or overflowed); h is likely beyond the stability edge (h * lambda_max "
        ">= 2 for GD). Use a smaller `h` or fewer steps."
    )


_NOT_A_STATE = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def _is_state(step: AbstractStepMap, y: Y, args: Args) -> bool:
    """Whether `y` is a state of `step` that holds more than the parameters."""
    try:
        params = step.parameters(y)
    except _NOT_A_STATE:
        return False
    if params is y:
        return False
    try:
        template = step.init(params, args)
    except _NOT_A_STATE:
        return False
    return jtu.tree_structure(template) == jtu.tree_structure(y)


def check_parameters(step: AbstractStepMap, params: Y, args: Args, name: str = "y") -> None:
    """Raise `InputError` if `params` is an optimiser state of `step` instead of its parameters.

    Structural (no loss is evaluated), so it also runs while tracing.
    """
    if _is_state(step, params, args):
        raise InputError(
            f"`{name}` is a state of {type(step).__name__} ({type(params).__name__}), but the "
            "parameters are expected here; pass `step_map.parameters(state)` (for "
            "driftlab's optimisers, `state.params`)."
        )


def check_state(step: AbstractStepMap, y: Y, name: str = "y0", args: Args = None) -> None:
    """Check a map's state: float64 parameters; optimiser state float64 or integer counts."""
    if not isinstance(step, AbstractStepMap):
        raise InputError(
            f"`step` must be a driftlab.AbstractStepMap, got {type(step).__name__}; "
            "subclass AbstractStepMap and implement `__call__(y, h, args)`."
        )
    try:
        params = step.parameters(y)
    except _NOT_A_STATE as error:
        raise InputError(
            f"`{name}` is not a state of {type(step).__name__} ({type(error).__name__}: {error}); "
            f"if it holds the parameters, pass the state `step.init({name}, args)` instead."
        ) from None
    check_float64_tree(y, name, allow_integer=True)
    check_float64_tree(params, f"the parameters of `{name}`")


def _check_map_output(step: AbstractStepMap, y0: Y, h, args: Args) -> None:
    """The map must return a state of `y0`'s structure, shapes and dtypes.

    Called while tracing, so it costs nothing once compiled.
    """
    out = abstract_output(step, type(step).__name__, y0, h, args)
    check_same_structure(out, y0, f"the output of {type(step).__name__}", "y0")
    for new, old in zip(array_leaves(out), array_leaves(y0)):
        if new.dtype != jnp.result_type(old):
            raise InputError(
                f"{type(step).__name__} turns a {jnp.result_type(old)} leaf of `y0` into "
                f"{new.dtype}; the loss or map must keep float64 throughout."
            )


def iterate(
    step: AbstractStepMap,
    y0: Y,
    h: RealScalarLike,
    n: int,
    args: Args = None,
    *,
    args_per_step: bool = False,
) -> Y:
    r"""The discrete iterates $y_0, \Phi_h(y_0), \ldots, \Phi_h^n(y_0)$, via `jax.lax.scan`.

    **Arguments:**

    - `step`: the one-step map.
    - `y0`: the initial state (a PyTree of float64 arrays).
    - `h`: the step size.
    - `n`: the number of steps.
    - `args`: the data for every step, or, with `args_per_step=True`, a stack
      whose leading axis has length `n` and whose slice `k` is used at step `k`.

    **Returns:** the iterates stacked along a new leading axis of length `n + 1`.

    **Raises:** `InputError` for a non-float64 or non-finite `y0`, a bad `h`
    or a negative `n`.
    """
    check_state(step, y0)
    h = check_step_size(h)
    if not isinstance(n, int) or n < 0:
        raise InputError(f"`n` must be a non-negative integer, got {n!r}.")
    if args_per_step:
        lengths = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jtu.tree_leaves(args)}
        if lengths != {n}:
            raise InputError(
                f"with `args_per_step=True`, every leaf of `args` needs a leading axis of "
                f"length n={n}; got leading lengths {lengths}."
            )
    ys = _iterate(step, y0, jnp.asarray(h), n, args, args_per_step)
    return _check_finite(
        ys, step, y0, h, jtu.tree_map(lambda x: x[0], args) if args_per_step else args
    )


@eqx.filter_jit
def _iterate(step, y0, h, n, args, args_per_step):
    _check_map_output(step, y0, h, jtu.tree_map(lambda x: x[0], args) if args_per_step else args)

    arrays, static = split(y0)

    def body(arrays, batch):
        y_next = split(step(eqx.combine(arrays, static), h, batch if args_per_step else args))[0]
        return y_next, y_next

    _, ys = jax.lax.scan(body, arrays, args if args_per_step else None, length=n)
    stacked = jtu.tree_map(lambda first, rest: jnp.concatenate([first[None], rest]), arrays, ys)
    return eqx.combine(stacked, static)


@eqx.filter_jit
def _advance(step, y0, h, n, args):
    _check_map_output(step, y0, h, args)
    arrays, static = split(y0)
    body = lambda _, a: split(step(eqx.combine(a, static), h, args))[0]
    return eqx.combine(jax.lax.fori_loop(0, n, body, arrays), static)


def advance(step: AbstractStepMap, y0: Y, h: RealScalarLike, n: int, args: Args = None) -> Y:
    r"""The last iterate $\Phi_h^n(y_0)$ only.

    Unlike `iterate`, nothing is stacked and `n` is traced, so changing `n`
    does not recompile.
    """
    check_state(step, y0)
    h = check_step_size(h)
    if not isinstance(n, int) or n < 0:
        raise InputError(f"`n` must be a non-negative integer, got {n!r}.")
    return _check_finite(
        _advance(step, y0, jnp.asarray(h), jnp.asarray(n), args), step, y0, h, args
    )
