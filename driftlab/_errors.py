"""driftlab's exceptions and warnings, and the input checks that raise them."""

import difflib
import math
import os
import sys
import warnings
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._tree import array_leaves


class DriftlabError(Exception):
    """Base class of every exception driftlab raises on purpose."""


class InputError(DriftlabError, ValueError):
    """A public function was given an argument it cannot use.

    The message names the argument and says how to fix it.
    """


class MeasurementError(DriftlabError, RuntimeError):
    """A measurement could not be made to the stated accuracy.

    Raised when a solve fails (too many steps, non-finite state), when a flow
    blows up, or when too few usable points remain to fit an order.
    """


class DivergenceError(MeasurementError):
    """The iterates diverged: non-finite, or as far from the flow as the state is large.

    A point of a sweep where this is raised is a failure, listed with its reason
    (`OrderEstimate.excluded`), never an error to fit.
    """


class StabilityWarning(UserWarning):
    """A measurement runs where its premises fail, e.g. `h * lambda_max >= 2`."""


class CostWarning(UserWarning):
    """A measurement is set up to cost far more than an equivalent one would (a dense field)."""


class RoundoffWarning(UserWarning):
    """Some points of a measurement sit at the round-off floor or solver tolerance."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Frames of these libraries sit between a user's call and driftlab (equinox wraps
#: methods, JAX calls back into traced functions); a warning skips them too.
_LIBRARY_MARKERS = (f"{os.sep}equinox{os.sep}", f"{os.sep}jax{os.sep}", f"{os.sep}diffrax{os.sep}")


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the first frame outside driftlab (and the libraries it calls through).

    A fixed `stacklevel` would point inside driftlab whenever one public
    function reaches the check through another.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(_PACKAGE_DIR) and not any(m in name for m in _LIBRARY_MARKERS):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def check_float64_tree(
    tree, name: str, *, allow_integer: bool = False, allow_complex: bool = False
) -> None:
    """Raise `InputError` unless every array leaf of `tree` is a finite float64 array.

    With `allow_integer`, integer leaves (step counts in optimiser state) pass
    too; with `allow_complex`, complex128 leaves (a flow's complex state). Leaves that
    are not arrays (a model's activation function, Python flags) are static:
    carried, never checked or moved. Only checks concrete
    values; under `jit` the dtype check still runs, the finiteness check is
    skipped (values are unknown at trace time).
    """
    leaves = array_leaves(tree)
    if not leaves:
        raise InputError(
            f"`{name}` has no array leaves; pass a PyTree of float64 arrays (or a model "
            "whose parameters are float64 arrays)."
        )
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if allow_integer and jnp.issubdtype(dtype, jnp.integer):
            continue
        if dtype != jnp.float64 and not (allow_complex and dtype == jnp.complex128):
            raise InputError(
                f"`{name}` has a leaf of dtype {dtype}; driftlab needs float64 "
                "(order-of-accuracy work is meaningless in float32). Convert once with "
                "`jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64) if "
                "eqx.is_array(x) else x, tree)` (a model keeps its activation functions)."
            )
        if not isinstance(leaf, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(leaf))):
            raise InputError(f"`{name}` contains NaN or inf; pass finite values.")


def check_step_size(h, name: str = "h") -> float:
    """Return `h` as a Python float after checking it is finite and positive."""
    try:
        value = float(h)
    except (TypeError, ValueError) as error:
        raise InputError(f"`{name}` must be a real scalar, got {h!r}.") from error
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"`{name}` must be finite and positive, got {value}.")
    return value


def check_factory(make, name: str, product: type, example: str) -> None:
    """Raise `InputError` unless `make` is a function of the step size `h`.

    A flow, an SDE or an optax transformation depends on `h`, so a sweep over
    step sizes takes a function `h -> object` and builds one per `h`; passing the
    object itself (built for one `h`) is the usual slip.
    """
    if isinstance(make, product):
        raise InputError(
            f"`{name}` must be a function of the step size `h`, got a "
            f"{type(make).__name__} already built for one `h`; pass `{example}` instead."
        )
    if not callable(make):
        raise InputError(
            f"`{name}` must be a function of the step size `h`, got {type(make).__name__}; "
            f"pass e.g. `{example}`."
        )


def check_same_structure(tree, reference, name: str, reference_name: str) -> None:
    """Raise `InputError` unless `tree` has the PyTree structure and shapes of `reference`."""
    structure = jtu.tree_structure(tree)
    expected = jtu.tree_structure(reference)
    if structure != expected:
        raise InputError(
            f"`{name}` has PyTree structure {structure}, but `{reference_name}` has "
            f"{expected}; they must match."
        )
    for leaf, ref in zip(array_leaves(tree), array_leaves(reference)):
        if jnp.shape(leaf) != jnp.shape(ref):
            raise InputError(
                f"`{name}` has a leaf of shape {jnp.shape(leaf)} where `{reference_name}` "
                f"has {jnp.shape(ref)}; they must match."
            )


def abstract_output(fn, description: str, *inputs):
    """`fn(*inputs)` evaluated on shapes only; JAX's shape and type errors become `InputError`.

    Catches a loss, map or flow that cannot be applied to the given state and
    data before anything runs, with a message that says which call failed.
    """
    try:
        return eqx.filter_eval_shape(fn, *inputs)
    except (TypeError, ValueError, IndexError, KeyError) as error:
        message = str(error).split("\n--------------------")[0]
        raise InputError(
            f"{description} cannot be evaluated on this state and `args` "
            f"({type(error).__name__}: {message}); check that `y0` and `args` have the "
            "structure and shapes the loss expects."
        ) from error


def runtime_error_message(error: Exception) -> str:
    """The message of an `eqx.error_if` check that fired in compiled code, minus JAX's frame."""
    text = str(error)
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.split("\n\n-------------------", 1)[0].strip()


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> InputError:
    """An `InputError` for an unknown registry name, listing the valid ones."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return InputError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")
