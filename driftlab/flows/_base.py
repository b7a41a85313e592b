import abc
import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_float64_tree, InputError, MeasurementError, runtime_error_message
from .._symmetry import GRADIENT_TOLERANCE, measure_gradient_structure
from .._tree import split, tree_sub, tree_vdot


#: Gauss-Legendre nodes of the line integrals that turn gradient fields into losses.
QUADRATURE_NODES = 16


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(tree))


def _checked_call(method, y_position: int):
    """`method`, checking its state argument and its runtime errors when called eagerly.

    Outside `jit` (no traced leaf) the state must be finite float64 (or complex128)
    arrays, and an `eqx.error_if` the field raises becomes one `MeasurementError`
    line instead of equinox's page of debugging advice. Under `jit` (a solve, a
    transform) nothing is added: the values are unknown and the checks cost nothing.
    """

    @ft.wraps(method)
    def checked(self, *inputs, **kwargs):
        if _is_traced((inputs, kwargs)):
            return method(self, *inputs, **kwargs)
        y = inputs[y_position] if len(inputs) > y_position else kwargs.get("y")
        if y is not None:
            check_float64_tree(y, "y", allow_complex=True)
        try:
            return method(self, *inputs, **kwargs)
        except eqx.EquinoxRuntimeError as error:
            message = runtime_error_message(error)
            name = type(self).__name__
            raise MeasurementError(
                message if message.startswith(name) else f"{name}: {message}"
            ) from None

    checked.checks_inputs = True
    return checked


#: The methods whose state argument (at this position after `self`) is checked when eager.
_CHECKED_METHODS = {"__call__": 1, "coefficients": 0, "modified_loss": 0}


class AbstractFlow(eqx.Module):
    r"""A (modified) vector field $\dot y = f_h(y) = f_0(y) + h f_1(y) + \cdots + h^p f_p(y)$.

    Called as `flow(t, y, args)` and returning the structure of `y`, so that
    `diffrax.ODETerm(flow)` works directly. `h` is the step size the field is
    modified for; `order` is `p`, the highest power of `h` kept: an order-`p`
    flow matches its map to $O(h^{p+2})$ per step (local error) and
    $O(h^{p+1})$ over a fixed time (global error).

    Flows that are gradients, $f_h = -\nabla \tilde L_h$, return
    $\tilde L_h$ from `modified_loss(y, args)`; for the others it raises.
    """

    h: AbstractVar[Float[Array, ""]]
    order: AbstractVar[int]

    def __init_subclass__(cls, **kwargs):
        # Every flow's field (and coefficients, loss) checks a state it is handed directly:
        # `flow(t, y, args)` with float32 or NaN parameters would otherwise return numbers.
        super().__init_subclass__(**kwargs)
        for name, position in _CHECKED_METHODS.items():
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__isabstractmethod__", False):
                if not getattr(method, "checks_inputs", False):
                    setattr(cls, name, _checked_call(method, position))

    @abc.abstractmethod
    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        """**Returns:** $f_h(y)$, with the PyTree structure of `y`."""

    def slow_state(self, params: Y, args: Args, *, t: RealScalarLike | None = None) -> Y | None:
        r"""The optimiser state over `params` on this flow's slow manifold, or `None`.

        Maps with auxiliary state (momentum, Adam moments) follow a flow of the
        parameters only once that state is slaved to them; flows of such maps
        return the full map state there, and the measurements in
        `driftlab.analysis` start the map from it. `None` (the default) means the
        flow has no auxiliary state to place: the given state is used as it is.
        `t`: the time $\tau$ of a time-dependent map's state (`driftlab.Scheduled`).
        """
        del params, args, t
        return None

    def outside_region(
        self, params: Y, args: Args, *, t: RealScalarLike | None = None
    ) -> str | None:
        r"""Why this flow does not describe its map at `params` and its `h`, or `None`.

        Flows of maps with auxiliary state (momentum, Adam, RMSProp) live on a
        slow manifold that exists only for small enough $h$ (for heavy-ball on a
        quadratic, $h\lambda < (1 - \sqrt\beta)^2$). They measure it on the map's
        linearisation at `params` (on the slow manifold) and return the reason
        when it does not exist; their fields then warn (`StabilityWarning`), and
        `driftlab.local_error`, `global_error` and `order_of_accuracy` refuse the
        point. `None` (the default): no such limit is known, or under `jit`.
        """
        del params, args, t
        return None

    def cost_advice(self, params: Y) -> str | None:
        r"""Why solving this flow from `params` costs far more than it needs to, or `None`.

        `driftlab.local_error`, `global_error`, `drift` and `order_of_accuracy` warn
        with it (`driftlab.CostWarning`) before solving, and show that solve's progress:
        a field that forms a dense matrix at every evaluation names its matrix-free
        option here. `None` (the default): nothing to advise.
        """
        del params
        return None

    def modified_loss(self, y: Y, args: Args) -> Scalar:
        r"""The modified loss $\tilde L_h$ with $f_h = -\nabla \tilde L_h$, where one exists."""
        del y, args
        raise InputError(
            f"{type(self).__name__} is not a gradient flow, so it has no modified "
            "loss; use `driftlab.is_gradient_field` to measure its non-gradient part."
        )


def series_in_h(coefficients: list[Y], h: RealScalarLike) -> Y:
    r"""$\sum_{k} h^k c_k$ for PyTrees $c_0, \dots, c_p$ of one structure (Horner's rule)."""
    total = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        total = jtu.tree_map(lambda t, c: c + h * t, total, coefficient)
    return total


class AbstractSeriesFlow(AbstractFlow):
    r"""A flow given by its coefficients: $f_h = \sum_{k=0}^{p} h^k f_k$.

    Subclass it and implement `coefficients(y, args)`, which returns
    $[f_0(y), \dots, f_p(y)]$; `__call__` sums them at the flow's `h`, and
    `driftlab.is_gradient_field` measures each coefficient as well as the sum.
    `h` (a non-negative real scalar) and `order` (a non-negative integer) are
    checked on construction.
    """

    @abc.abstractmethod
    def coefficients(self, y: Y, args: Args) -> list[Y]:
        r"""**Returns:** $[f_0(y), \dots, f_p(y)]$, each with the PyTree structure of `y`."""

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        return series_in_h(self.coefficients(y, args), self.h)

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 0:
            raise InputError(f"`order` must be a non-negative integer, got {self.order!r}.")
        if jnp.ndim(self.h) != 0 or not jnp.issubdtype(jnp.result_type(self.h), jnp.floating):
            raise InputError(f"`h` must be a real scalar, got {self.h!r}.")
        if not isinstance(self.h, jax.core.Tracer) and not (
            np.isfinite(float(self.h)) and float(self.h) >= 0
        ):
            raise InputError(f"`h` must be finite and non-negative, got {float(self.h)}.")


def require_gradient_field(flow: AbstractFlow, y: Y, args: Args, advice: str) -> None:
    """Raise `InputError` (with `advice`) unless `flow` and its coefficients are gradients at `y`.

    Measured with `driftlab.is_gradient_field` (two probes), outside `jit` only: under
    `jit` the values are unknown and the check is skipped.
    """
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(y)):
        return
    structure = measure_gradient_structure(
        flow,
        y,
        args,
        per_coefficient=isinstance(flow, AbstractSeriesFlow),
        num_probes=2,
        key=None,
        tolerance=GRADIENT_TOLERANCE,
    )
    if not structure.is_gradient:
        raise InputError(
            f"`y`: {type(flow).__name__} is not a gradient field there (relative asymmetry "
            f"of its Jacobian {structure.relative_asymmetry:.3g}, per coefficient "
            f"{[f'{a:.2g}' for a in structure.coefficient_asymmetry]}), so it has no loss; "
            + advice
        )


def segment_potential(field, y: Y, reference: Y) -> Scalar:
    r"""$-\int_0^1 F\big(r + s(y - r)\big)\cdot(y - r)\,ds$ for a field $F$ = `field(point)`.

    Gauss–Legendre quadrature with `QUADRATURE_NODES` nodes along the segment from
    `reference` $r$ to $y$: exact for polynomial fields up to degree 31 along the
    segment (quadratic losses), spectrally accurate for analytic ones. For
    $F = -\nabla \tilde L$ it is $\tilde L(y) - \tilde L(r)$.
    """
    nodes, node_weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
    # Over the array leaves: a model's static leaves (activations) stay as they are.
    start, static = split(reference)
    direction = tree_sub(y, reference)
    total = 0.0
    for node, weight in zip((nodes + 1) / 2, node_weights / 2):
        point = eqx.combine(jtu.tree_map(lambda r, v: r + node * v, start, direction), static)
        total = total - weight * tree_vdot(field(point), direction)
    return total
