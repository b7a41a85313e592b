import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Int

from .._custom_types import Args, RealScalarLike, Y
from .._errors import (
    abstract_output,
    check_float64_tree,
    check_same_structure,
    InputError,
    MeasurementError,
    runtime_error_message,
)
from .._tree import array_leaves, split


DEFAULT_RTOL = 1e-12
DEFAULT_ATOL = 1e-12


class _Solution(eqx.Module):
    """What `solve` needs from a `diffrax.Solution`, computed inside the jitted call."""

    ys: Y
    result: diffrax.RESULTS
    successful: Bool[Array, ""]
    num_steps: Int[Array, ""]


@eqx.filter_jit
def _diffeqsolve(flow, y0, t0, t1, ts, args, rtol, atol, max_steps, progress=False):
    # At trace time only (once per compilation): the flow must return y0's structure.
    name = type(flow.flow if isinstance(flow, _OnArrays) else flow).__name__
    field_shape = abstract_output(flow, name, t0, y0, args)
    check_same_structure(field_shape, y0, "the flow's output", "y0")
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    if ts is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        # Step exactly to each requested time: diffrax's Dopri8 interpolant between steps
        # is far less accurate than the steps themselves at tight tolerances.
        saveat = diffrax.SaveAt(ts=ts)
        controller = diffrax.ClipStepSizeController(controller, step_ts=ts)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow),
        diffrax.Dopri8(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        # Printed from the compiled solve as it advances (a bool is static: its own compile).
        progress_meter=diffrax.TextProgressMeter(0.1) if progress else diffrax.NoProgressMeter(),
    )
    # Unstacking and the success test happen here, not eagerly after the call: each eager
    # op costs a dispatch, which for small states is comparable to the whole solve.
    ys = sol.ys if ts is not None else jtu.tree_map(lambda leaf: leaf[-1], sol.ys)
    return _Solution(
        ys, sol.result, sol.result == diffrax.RESULTS.successful, sol.stats["num_steps"]
    )


def _last_finite_point(flow, y0, t0, t1, args, rtol, atol, max_steps):
    """Where a failed solve was last finite: the time and state norm on a grid of 65 times."""
    ts = jnp.linspace(float(t0), float(t1), 65)
    sol = _diffeqsolve(flow, y0, ts[0], ts[-1], ts, args, rtol, atol, max_steps)
    norms = np.asarray(
        sum(
            jnp.sum(jnp.abs(leaf.reshape(ts.size, -1)) ** 2, axis=1)
            for leaf in jtu.tree_leaves(sol.ys)
        )
    )
    finite = np.flatnonzero(np.isfinite(norms))
    last = finite[-1] if finite.size else 0
    return float(ts[last]), float(np.sqrt(norms[last]))


class _ComplexAsReal(eqx.Module):
    """A flow on a complex state seen as a flow on its `(real, imaginary)` parts.

    diffrax's complex support is experimental (it warns); splitting is exact.
    """

    flow: object

    def __call__(self, t, y, args):
        return _split_complex(self.flow(t, _merge_complex(y), args))


class _OnArrays(eqx.Module):
    """A flow on a model seen as a flow on its array leaves; the static leaves are fixed."""

    flow: object
    static: object

    def __call__(self, t, y, args):
        return split(self.flow(t, eqx.combine(y, self.static), args))[0]


def _split_complex(tree):
    return jtu.tree_map(jnp.real, tree), jtu.tree_map(jnp.imag, tree)


def _merge_complex(pair):
    return jtu.tree_map(lambda re, im: re + 1j * im, *pair)


def solve(
    flow,
    y0: Y,
    t1: RealScalarLike,
    ts=None,
    args: Args = None,
    *,
    t0: RealScalarLike = 0.0,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_steps: int = 100_000,
    progress: bool = False,
) -> Y:
    r"""Solve $\dot y = f(t, y, \text{args})$ from `t0` to `t1` with diffrax.

    Uses `diffrax.Dopri8` (order 8) with a PID step-size controller at tight
    tolerances, so that the solve is far more accurate than the drift being
    measured (default `rtol = atol = 1e-12`).

    **Arguments:**

    - `flow`: any callable `flow(t, y, args)`, e.g. an `AbstractFlow`.
    - `y0`: the initial state, a PyTree of float64 (or complex128) arrays.
    - `t1`: the final time.
    - `ts`: optional increasing times in `[t0, t1]` at which to return the state; the
      solver steps exactly to each, so they carry the full accuracy of the steps.
    - `args`: passed to the flow.
    - `t0`, `rtol`, `atol`, `max_steps`: the solver's settings.
    - `progress`: print the fraction of `[t0, t1]` done, every 10% (for long solves, e.g.
      a dense field on a model).

    **Returns:** the state at `t1`, or, when `ts` is given, the states at `ts`
    stacked along a new leading axis.

    **Raises:** `MeasurementError` when the solver fails (too many steps, a
    non-finite state: the flow blew up), naming the time it reached.
    """
    if not array_leaves(y0):
        check_float64_tree(y0, "y0")
    for leaf in array_leaves(y0):
        if jnp.result_type(leaf) == jnp.complex128:
            continue
        check_float64_tree(leaf, "y0")
    if not float(t1) > float(t0):
        raise InputError(f"`t1` must be greater than `t0`; got t0={float(t0)}, t1={float(t1)}.")
    if ts is not None:
        ts = jnp.asarray(ts, dtype=jnp.float64)
        if ts.ndim != 1 or np.any(np.diff(np.asarray(ts)) < 0):
            raise InputError("`ts` must be a one-dimensional increasing array of times.")
    name = type(flow).__name__
    y0, static = split(y0)
    if jtu.tree_leaves(static):
        flow = _OnArrays(flow, static)
    complex_state = any(jnp.iscomplexobj(leaf) for leaf in jtu.tree_leaves(y0))
    if complex_state:
        flow, y0 = _ComplexAsReal(flow), _split_complex(y0)
    try:
        sol = _diffeqsolve(
            flow,
            y0,
            np.asarray(float(t0)),
            np.asarray(float(t1)),
            ts,
            args,
            rtol,
            atol,
            max_steps,
            progress,
        )
    except eqx.EquinoxRuntimeError as error:
        message = runtime_error_message(error)
        if not message.startswith(name):
            message = f"{name}: {message}"
        raise MeasurementError(message) from None
    if not bool(sol.successful):
        t_last, norm_last = _last_finite_point(flow, y0, t0, t1, args, rtol, atol, max_steps)
        raise MeasurementError(
            f"the diffrax solve of {name} from t0={float(t0)} to "
            f"t1={float(t1)} failed after {int(sol.num_steps)} steps "
            f"({diffrax.RESULTS[sol.result]!s}). The solution was last seen at t={t_last:.6g} "
            f"with norm {norm_last:.6g}. If it blows up, the flow's solution does not "
            "exist up to `t1`; otherwise raise `max_steps` or loosen `rtol`/`atol`."
        )
    return eqx.combine(_merge_complex(sol.ys) if complex_state else sol.ys, static)
