"""Where the parameters, the auxiliary state and the step counters sit in a map's state."""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Y
from .._errors import InputError
from .._tree import array_leaves, ravel, split
from ._jaxpr import counter_mask
from ._maps import AbstractStepMap


#: The count at which step counters are held in every expansion: "after burn-in".
#: Any bias correction $1 - b^n$ with $b < 1 - 10^{-6}$ is then exactly 1 in float64.
BURNED_IN_COUNT = 2**30


class Layout(NamedTuple):
    r"""Where the parameters, the clock and the auxiliary state sit in the ravelled map state.

    Step counters are not ravelled: `unravel(u)` puts them back at
    `BURNED_IN_COUNT`, `ravel(state)` leaves them out. The continuous time
    $\tau$ of a time-dependent map (`step.time(state)`) is ravelled and expanded
    like the parameters ($\tau \mapsto \tau + h$ tends to the identity): it is in
    `clock_index`, neither a parameter nor auxiliary state.
    """

    theta_index: np.ndarray
    aux_index: np.ndarray
    unravel: Callable
    ravel: Callable
    clock_index: np.ndarray = np.zeros(0, dtype=np.int64)


def state_layout(step: AbstractStepMap, template: Y, params: Y, args=None) -> Layout:
    """Where `params` sit in the ravelled `template`: step counters (held burned in) and a
    model's static leaves are not ravelled."""
    counters = counter_mask(step, template, args)
    template_arrays, template_static = split(template)
    treedef = jtu.tree_structure(template_arrays)
    expanded = jtu.tree_unflatten(treedef, [not c for c in counters])
    burned_in = [
        jnp.full(jnp.shape(leaf), BURNED_IN_COUNT, jnp.result_type(leaf)) if c else None
        for leaf, c in zip(jtu.tree_leaves(template_arrays), counters)
    ]
    flat_template, unravel_expanded = ravel(eqx.filter(template_arrays, expanded))

    # `Partial`s, not closures: they hash by value, so jitted functions that take the layout
    # as an argument (the region measurement) reuse their compilations.
    ravel_state = jtu.Partial(_ravel_expanded, expanded)
    unravel = jtu.Partial(_unravel_burned_in, unravel_expanded, burned_in, treedef, template_static)
    size = flat_template.size
    param_arrays, param_static = split(params)
    num_params = sum(np.size(leaf) for leaf in jtu.tree_leaves(param_arrays))
    # Mark the parameters 1..n, in ravel order (numpy, so that it stays concrete under `jit`).
    param_leaves, param_def = jtu.tree_flatten(param_arrays)
    ends = np.cumsum([np.size(leaf) for leaf in param_leaves])
    marks = np.split(np.arange(1, num_params + 1, dtype=np.float64), ends[:-1])
    marked_params = jtu.tree_unflatten(
        param_def, [m.reshape(np.shape(leaf)) for m, leaf in zip(marks, param_leaves)]
    )
    zeros = jtu.tree_map(lambda x: np.zeros(np.shape(x)), template_arrays)
    marked_state = step.with_parameters(
        eqx.combine(zeros, template_static), eqx.combine(marked_params, param_static)
    )
    leaves = array_leaves(marked_state)
    try:
        marks = np.concatenate(
            [np.ravel(np.asarray(leaf)) for leaf, c in zip(leaves, counters) if not c]
        )
    except (TypeError, jax.errors.TracerArrayConversionError) as error:
        raise InputError(
            "`step_map.with_parameters` must place the parameters into the state "
            "unchanged (a PyTree substitution)."
        ) from error
    positions = np.flatnonzero(marks)
    if len(leaves) != len(counters) or marks.size != size or positions.size != num_params:
        raise InputError(
            "`step_map.with_parameters(state, params)` must hold the parameters as "
            f"leaves of the state: found {positions.size} of {num_params} parameters."
        )
    theta_index = positions[np.argsort(marks[positions])]
    clock_index = _clock_index(step, eqx.combine(zeros, template_static), counters)
    aux_index = np.setdiff1d(np.arange(size), np.union1d(theta_index, clock_index))
    return Layout(theta_index, aux_index, unravel, ravel_state, clock_index)


def _clock_index(step: AbstractStepMap, zero_state: Y, counters: list[bool]) -> np.ndarray:
    """Where the time of a time-dependent map sits in the ravelled state (empty if none)."""
    if step.time(zero_state) is None:
        return np.zeros(0, dtype=np.int64)
    leaves = array_leaves(step.with_time(zero_state, np.float64(1.0)))
    marks = np.concatenate(
        [np.ravel(np.asarray(leaf)) for leaf, c in zip(leaves, counters) if not c]
    )
    return np.flatnonzero(marks)


def _ravel_expanded(expanded, state):
    return ravel(eqx.filter(split(state)[0], expanded))[0]


def _unravel_burned_in(unravel_expanded, burned_in, treedef, template_static, u):
    kept = jtu.tree_leaves(unravel_expanded(u))[::-1]
    arrays = jtu.tree_unflatten(treedef, [kept.pop() if c is None else c for c in burned_in])
    return eqx.combine(arrays, template_static)
