r"""Drift cancellation: corrected fields that make an optimiser follow a chosen flow.

The inverse question of backward error analysis: instead of the flow a map
follows, the field to feed the map so that it follows a flow we choose. For
Runge–Kutta methods this is the *modifying integrator* of Chartier, Hairer &
Vilmart (2007); here it is built automatically, to any order, for optimisers
whose update is driven by a gradient.
"""

import functools as ft
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.experimental import jet
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import ravel, split, tree_vdot, zeros_like
from ..integrators import (
    AbstractStepMap,
    AlternatingGD,
    ExplicitEuler,
    GradientDescent,
    HeavyBall,
    Nesterov,
    SGD,
    SGDEpoch,
    SimultaneousGD,
)
from ..integrators._layout import state_layout
from ..integrators._maps import num_batches
from ._base import (
    AbstractFlow,
    AbstractSeriesFlow,
    require_gradient_field,
    segment_potential,
    series_in_h,
)
from ._games import SimultaneousGameFlow
from ._gradient import GradientFlow
from ._losses import epoch_loss
from ._momentum import HeavyBallFlow
from ._taylor import slow_manifold


_SINGLE_LOSS_MAPS = (GradientDescent, SGD, SGDEpoch, HeavyBall, Nesterov)
_GAME_MAPS = (SimultaneousGD, AlternatingGD)
_SUPPORTED = (*_SINGLE_LOSS_MAPS, *_GAME_MAPS, ExplicitEuler)


def _supported_names() -> str:
    return ", ".join(cls.__name__ for cls in _SUPPORTED)


class _VectorFieldFlow(AbstractFlow):
    """`ExplicitEuler`'s own field $\\dot y = f(y)$ as a flow (its default target)."""

    vector_field: Callable
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)
    order: int = eqx.field(static=True, default=0)

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        return self.vector_field(y, args)


def default_target(step_map: AbstractStepMap) -> AbstractFlow:
    r"""The order-0 flow of `step_map`: what a drift-cancelling field makes it follow by default.

    `GradientDescent`, `SGD`: `GradientFlow(loss)`; `SGDEpoch`: gradient flow
    of the mean batch loss; `HeavyBall`, `Nesterov`: $\dot\theta =
    -\nabla L/(1-\beta)$ (`HeavyBallFlow` at $h = 0$); `SimultaneousGD`,
    `AlternatingGD`: $(\alpha f, \lambda g)$ (`SimultaneousGameFlow` at
    $h = 0$); `ExplicitEuler`: its own vector field.

    **Raises:** `InputError` for any other map.
    """
    if isinstance(step_map, (GradientDescent, SGD)):
        return GradientFlow(step_map.loss)
    if isinstance(step_map, SGDEpoch):
        return GradientFlow(ft.partial(epoch_loss, step_map.loss))
    if isinstance(step_map, (HeavyBall, Nesterov)):
        return HeavyBallFlow(step_map.loss, 0.0, step_map.beta)
    if isinstance(step_map, _GAME_MAPS):
        return SimultaneousGameFlow(
            step_map.loss_phi, step_map.loss_theta, 0.0, step_map.alpha, step_map.lam
        )
    if isinstance(step_map, ExplicitEuler):
        return _VectorFieldFlow(step_map.vector_field)
    raise InputError(
        f"`step_map`: drift cancellation needs a map driven linearly by a gradient or a "
        f"field ({_supported_names()}), got {type(step_map).__name__}."
    )


def _pseudo_loss(field: Callable, h, args: Args, block: int | None) -> Callable:
    r"""A loss whose gradient is $-G$ for $G$ = `field(params, args, h)`: it *drives* a map by $G$.

    A `jax.custom_jvp` with value 0 and JVP $\langle -G(\text{params}), \dot{\text{params}}\rangle$,
    linear in the tangent, so `jax.grad` transposes it into $-G$ and the
    gradient's computation holds $G$'s operations directly (Taylor mode,
    `jax.experimental.jet`, then expands through it). For a game, `block`
    is the player: only its block of $G$ is supplied, zeros for the other.
    The `batch` a map passes is ignored: the field is evaluated on the full
    `args` given to the driven map.
    """

    def loss(params, batch):
        del batch
        # Differentiated through the array leaves only: a model's static leaves (its
        # activation function) are not JAX types and cannot enter a `custom_jvp`.
        arrays, static = split(params)

        @jax.custom_jvp
        def pseudo(arrays, args, h):
            del arrays, args, h
            return jnp.zeros((), jnp.result_type(float))

        @pseudo.defjvp
        def pseudo_jvp(primals, tangents):
            arrays_, args_, h_ = primals
            value, tangent = field(eqx.combine(arrays_, static), args_, h_), tangents[0]
            if block is not None:
                value, tangent = value[block], tangent[block]
            return pseudo(arrays_, args_, h_), -tree_vdot(value, tangent)

        return pseudo(arrays, args, h)

    return loss


def drive(step_map: AbstractStepMap, field: Callable, h: RealScalarLike, args: Args):
    r"""`step_map` with its loss(es) replaced so that it is driven by the field $G$.

    `field(params, args, h)` returns $G$ with the parameters' structure. The
    map's gradient of the loss becomes $-G$ (for games, each player's own block
    of $G$), so gradient descent becomes $\theta + hG(\theta)$, heavy-ball
    $m' = \beta m - G$, and so on; `ExplicitEuler` takes $G$ as its field.
    Every supported map is then consistent in its driving field:
    $\Phi_h[G](\theta) = \theta + h\,S\,G(\theta) + O(h^2)$ on its slow manifold,
    with $S$ = `velocity_scale(step_map, args)`.

    **Raises:** `InputError` for an unsupported map.
    """
    if isinstance(step_map, ExplicitEuler):
        return ExplicitEuler(lambda y, _: field(y, args, h))
    if isinstance(step_map, _SINGLE_LOSS_MAPS):
        return eqx.tree_at(lambda m: m.loss, step_map, _pseudo_loss(field, h, args, None))
    if isinstance(step_map, _GAME_MAPS):
        losses = (_pseudo_loss(field, h, args, 0), _pseudo_loss(field, h, args, 1))
        return eqx.tree_at(lambda m: (m.loss_phi, m.loss_theta), step_map, losses)
    default_target(step_map)  # raises the InputError naming the supported maps
    raise AssertionError("unreachable")


def velocity_scale(step_map: AbstractStepMap, args: Args):
    r"""$S$ with $\Phi_h[G] = \theta + h\,S\,G + O(h^2)$: the velocity per unit of driving field.

    1 for gradient descent, SGD and Euler; $m$ for an `SGDEpoch` of $m$
    batches (one call is $m$ steps); $1/(1-\beta)$ for heavy-ball and Nesterov
    on their slow manifold; the pair $(\alpha, \lambda)$ for games (one scale
    per player).
    """
    if isinstance(step_map, SGDEpoch):
        return jnp.asarray(float(num_batches(args)))
    if isinstance(step_map, (HeavyBall, Nesterov)):
        return 1 / (1 - step_map.beta)
    if isinstance(step_map, _GAME_MAPS):
        return (step_map.alpha, step_map.lam)
    return jnp.asarray(1.0)


def _scale_vector(scale, params: Y) -> Array:
    """The scale `S` broadcast over the ravelled parameters (per player for games)."""
    if isinstance(scale, tuple):
        tree = tuple(
            jtu.tree_map(lambda leaf, s=s: jnp.full(jnp.shape(leaf), s), part)
            for s, part in zip(scale, params)
        )
    else:
        tree = jtu.tree_map(lambda leaf: jnp.full(jnp.shape(leaf), scale), split(params)[0])
    return ravel_pytree(tree)[0]


def flow_series(flow, y: Y, args: Args, order: int) -> list[Array]:
    r"""Taylor coefficients $y_0, \dots, y_K$ in $t$ of the solution of $\dot y = F(y)$, $y(0) = y$.

    Taylor-mode ODE recursion: $y_{k+1} = [t^k]\,F(y(t)) / (k+1)$, each
    $[t^k]F$ by one `jax.experimental.jet` call on the known coefficients
    (which take derivatives: term $m$ is $m!\,y_m$). `flow` is called as
    `flow(0, y, args)` and treated as a fixed, autonomous field. The
    coefficients are ravelled (`jax.flatten_util.ravel_pytree` order).
    """
    flat, unravel = ravel(y)

    def field(u):
        return ravel(flow(0.0, unravel(u), args))[0]

    coefficients = [flat]
    for k in range(order):
        if k == 0:
            value = field(flat)
        else:
            derivatives = [c * math.factorial(m) for m, c in enumerate(coefficients[1:], 1)]
            value = jet.jet(field, (flat,), (derivatives,))[1][k - 1] / math.factorial(k)
        coefficients.append(value / (k + 1))
    return coefficients


def _step_series(step: AbstractStepMap, params: Y, args: Args, order: int) -> list[Array]:
    r"""Taylor coefficients $[h^1], \dots, [h^K]$ in $h$ of the parameters after one step.

    Maps with auxiliary state start on their slow manifold, expanded to
    $O(h^{K-1})$ as `ModifiedFlow` does (`slow_manifold`), so the step's
    parameters are right to $O(h^K)$. Ravelled; `jet` speaks derivatives
    (term $m$ is $m!$ times the Taylor coefficient), converted both ways here.
    """
    template = step.init(params, args)
    layout = state_layout(step, template, params, args)
    u0 = layout.ravel(step.with_parameters(template, params))

    def map_flat(u, h):
        return layout.ravel(step(layout.unravel(u), h, args))

    zero = jnp.zeros((), u0.dtype)
    h_series = [jnp.ones((), u0.dtype)] + [zero] * (order - 1)
    factorials = [float(math.factorial(m)) for m in range(1, order + 1)]
    if layout.aux_index.size:
        u0, slow, _ = slow_manifold(map_flat, u0, layout, order - 1)
        u_series = [c * f for c, f in zip([*slow, jnp.zeros_like(u0)], factorials)]
        series = jet.jet(map_flat, (u0, zero), (u_series, h_series))[1]
        return [s[layout.theta_index] / f for s, f in zip(series, factorials)]
    series = jet.jet(lambda h: map_flat(u0, h), (zero,), (h_series,))[1]
    return [s / f for s, f in zip(series, factorials)]  # the state is the parameters


class CorrectedField(AbstractSeriesFlow):
    r"""The field that makes a step map follow a chosen flow: drift cancellation, to any order.

    Given a map built from a loss (or a field) and a **target** flow
    $\dot y = F(y)$ (default: the map's own order-0 flow, `default_target`),
    builds

    $$g_h = g_0 + h g_1 + \dots + h^p g_p$$

    such that the map **driven by** $g_h$ (its loss replaced by one whose
    gradient is $-g_h$; see `drive` and `DrivenStepMap`) matches the target's
    exact flow $\varphi$ over one call to $O(h^{p+2})$:
    $\Phi_h[g_h](y) = \varphi_{\tau h}(y) + O(h^{p+2})$ ($\tau h$ = the call's
    duration). It is the inverse question of backward error analysis, the
    *modifying integrator* of Chartier, Hairer & Vilmart (2007). For gradient
    descent and gradient flow, $g_0 = -\nabla L$ and

    $$g_1 = \tfrac12 \nabla^2 L\,\nabla L = -\nabla\big(-\tfrac14\|\nabla L\|^2\big),
    \qquad \tilde L_h = L - \tfrac h4\|\nabla L\|^2,$$

    the IGR regulariser with the opposite sign; on $L = \frac12 y^\top A y$
    the whole series sums to $g_h(y) = (e^{-hA} - I)\,y/h$, so
    $g_k = (-A)^{k+1} y/(k+1)!$.

    **How.** Every supported map is consistent in its driving field,
    $\Phi_h[G](y) = y + h\,S\,G(y) + O(h^2)$ (`velocity_scale`: $S = 1$ for GD,
    $m$ for an epoch of $m$ batches, $(\alpha, \lambda)$ per player in games,
    $1/(1-\beta)$ for momentum on its slow manifold). So a change of $G$ at
    order $h^k$ changes $\Phi_h$ first at $h^{k+1}$, by $S g_k$, and

    $$g_0 = \tau S^{-1} F, \qquad
    g_k = -S^{-1}\,[h^{k+1}]\Big(\Phi_h\big[g^{(k-1)}_h\big](y) - \varphi_{\tau h}(y)\Big),$$

    where $g^{(k-1)}_h$ is the truncation after $h^{k-1} g_{k-1}$. The
    coefficients in $h$ are taken by Taylor-mode AD (`jax.experimental.jet`)
    through the driven map, whose field is evaluated by the same recursion at
    the points the map visits (nested jets); those of $\varphi$ by Taylor-mode
    ODE recursion (`flow_series`). Matrix-free, no finite differences. The
    nesting makes the cost grow about geometrically in $p$ (measured in
    `docs/gallery/drift-cancellation.md`): fine for $p \le 3$–$4$.

    **Momentum** (`HeavyBall`, `Nesterov`): the map is matched on its slow
    manifold, as for `ModifiedFlow`: the state of the *driven* map is slaved
    to the parameters, and its one-step parameter map from there is what
    follows the target. Start the driven map at
    `ModifiedFlow(DrivenStepMap(step_map, field), h, p).slow_state(params, args)`
    to see $O(h^{p+2})$ local errors; from any other state the fast part adds
    an $O(h)$ transient. The slow manifold needs $h\lambda < (1-\sqrt\beta)^2$
    (heavy-ball).

    **SGD epochs**: the driving field is evaluated on the whole stack of
    batches at every step of the epoch (one corrected loss for all batches);
    the target defaults to gradient flow of the mean batch loss.

    **Arguments:**

    - `step_map`: `GradientDescent`, `SGD`, `SGDEpoch` (fixed batches),
      `HeavyBall`, `Nesterov`, `SimultaneousGD`, `AlternatingGD` or
      `ExplicitEuler`.
    - `h`: the step size the field is corrected for.
    - `order`: $p$, the highest power of $h$ kept.
    - `target`: the flow to follow, `target(t, y, args)` (autonomous; its own
      `h`, if any, is a fixed parameter of the target, not the step size);
      default `default_target(step_map)`.

    `coefficients(y, args)` returns $[g_0, \dots, g_p]$; `flow(t, y, args)`
    the sum at `h`; `driven_map()` the map driven by this field (use it with
    `driftlab.iterate`, `driftlab.order_of_accuracy`, ...);
    `driftlab.is_gradient_field(field, y, args).coefficient_is_gradient` says
    whether each $g_k$ is a gradient; where all are,
    `modified_loss` is the corrected loss $\tilde L_h$ with
    $g_h = -\nabla\tilde L_h$, to train on with any optimiser. For gradient
    descent towards gradient flow that is $p \le 1$ on nonlinear losses:
    $g_2$ is not a gradient (measured relative asymmetry 0.44 on the MLP on
    digits: the time-$h$ map of a gradient flow has a non-symmetric Jacobian;
    on quadratics every $g_k$ is a gradient); the driven map, or
    `loss_like` with any gradient optimiser, works at every order.

    !!! example
        ```python
        problem = driftlab.problems.mlp_digits()
        corrected = driftlab.CorrectedField(driftlab.GradientDescent(problem.loss), 0.5, 2)
        path = driftlab.iterate(corrected.driven_map(), problem.params, 0.5, 100, problem.data)
        # follows gradient flow to O(h^3) per step, where plain GD is O(h)
        ```

    ??? cite "References"
        ```bibtex
        @article{chartier2007modified,
          title={Numerical integrators based on modified differential equations},
          author={Chartier, Philippe and Hairer, Ernst and Vilmart, Gilles},
          journal={Mathematics of Computation},
          volume={76},
          number={260},
          pages={1941--1953},
          year={2007}
        }
        @inproceedings{barrett2021implicit,
          title={Implicit Gradient Regularization},
          author={Barrett, David G. T. and Dherin, Benoit},
          booktitle={International Conference on Learning Representations},
          year={2021}
        }
        ```
    """

    step_map: AbstractStepMap
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: int = eqx.field(static=True)
    target: Callable

    def __init__(
        self,
        step_map: AbstractStepMap,
        h: RealScalarLike,
        order: int,
        target: Callable | None = None,
    ):
        if not isinstance(step_map, AbstractStepMap):
            raise InputError(
                f"`step_map` must be a driftlab.AbstractStepMap, got {type(step_map).__name__}."
            )
        self.step_map = step_map
        self.h = h
        self.order = order
        self.target = default_target(step_map) if target is None else target

    def __check_init__(self):
        if not isinstance(self.step_map, _SUPPORTED):
            default_target(self.step_map)  # raises, naming the supported maps
        if not callable(self.target):
            raise InputError("`target` must be a flow, callable as `target(t, y, args)`.")

    def _truncated(self, order: int) -> "CorrectedField":
        return CorrectedField(self.step_map, self.h, order, self.target)

    def coefficients(self, y: Y, args: Args) -> list[Y]:
        r"""$[g_0(y), \dots, g_p(y)]$, each with the PyTree structure of the parameters `y`.

        Compiled (`eqx.filter_jit`) once per map, order and shapes.

        **Raises:** `InputError` if `target(0, y, args)` does not return `y`'s structure.
        """
        return _compiled_coefficients(self, y, args)

    def _coefficients(self, y: Y, args: Args) -> list[Y]:
        flat, unravel = ravel_pytree(split(y)[0])
        tau = self.step_map.duration(1.0, args)
        scale = _scale_vector(velocity_scale(self.step_map, args), y)
        flow = flow_series(self.target, y, args, self.order + 1)
        if flow[1].shape != flat.shape:
            raise InputError(
                "`target(t, y, args)` must return the structure and shapes of the parameters."
            )
        fields = [tau * flow[1] / scale]
        for k in range(1, self.order + 1):
            driven = DrivenStepMap(self.step_map, self._truncated(k - 1))
            step_coefficient = _step_series(driven, y, args, k + 1)[k]
            fields.append(-(step_coefficient - tau ** (k + 1) * flow[k + 1]) / scale)
        return [unravel(f) for f in fields]

    def evaluate(self, y: Y, args: Args, h: RealScalarLike) -> Y:
        r"""$g_h(y) = \sum_{k \le p} h^k g_k(y)$ at any step size `h` (a polynomial in `h`)."""
        # Not compiled on its own: it is traced inside the Taylor expansions of the recursion.
        return series_in_h(self._coefficients(y, args), h)

    def driven_map(self) -> "DrivenStepMap":
        """The step map driven by this field at whatever `h` it is called with."""
        return DrivenStepMap(self.step_map, self)

    def loss_like(self, params: Y, args: Args) -> Scalar:
        r"""A pseudo-loss whose gradient is $-g_h$ (value 0): drive any gradient optimiser with it.

        `optax` or `GradientDescent(corrected.loss_like)` then follow the
        target; it needs no gradient structure (games, fixed-order epochs).
        For games use `driven_map()`, which gives each player its block.
        """
        return _pseudo_loss(lambda p, a, _: self(0.0, p, a), self.h, args, None)(params, None)

    def _potential(self, y: Y, args: Args, reference: Y) -> Scalar:
        base, first = 0.0, 0
        if not isinstance(velocity_scale(self.step_map, args), tuple):
            try:
                weight = self.step_map.duration(1.0, args) / velocity_scale(self.step_map, args)
                base, first = weight * self.target.modified_loss(y, args), 1
            except (InputError, AttributeError):
                pass
        if first > self.order:
            return base
        scale = self.h**first
        return base + segment_potential(
            lambda point: jtu.tree_map(
                lambda f: scale * f, series_in_h(self.coefficients(point, args)[first:], self.h)
            ),
            y,
            reference,
        )

    def modified_loss(self, y: Y, args: Args, *, reference: Y | None = None) -> Scalar:
        r"""The corrected loss $\tilde L_h$, $g_h = -\nabla\tilde L_h$ (where $g_h$ is a gradient).

        $$\tilde L_h(y) = \tilde L_0(y)
        - \sum_{k=1}^{p} h^k \int_0^1 g_k\big(r + s(y - r)\big)\cdot(y - r)\,ds,$$

        with $\tilde L_0 = \tau S^{-1}\times$ `target.modified_loss` when the
        target has one (for gradient descent: $L$ itself), else the same
        line integral of $g_0$; Gauss–Legendre quadrature with
        `QUADRATURE_NODES` nodes along the segment from `reference` $r$
        (default: the origin). So $\tilde L_h(r) = \tilde L_0(r)$, and for
        gradient descent at order 1,
        $\tilde L_h(y) = L(y) - \frac h4\big(\|\nabla L(y)\|^2 - \|\nabla L(r)\|^2\big)$:
        $L - \frac h4\|\nabla L\|^2$ up to a constant. Its **gradient** is
        $-g_h$ exactly (a `jax.custom_jvp`; no reverse mode through the
        quadrature), so training on it with `optax` is training with $g_h$.

        **Raises:** `InputError` when some $g_k$ is not a gradient at `y`
        (checked with `driftlab.is_gradient_field` outside `jit`).
        """
        require_gradient_field(self, y, args, "drive the map with `driven_map()` or `loss_like`.")
        if reference is None:
            reference = zeros_like(y)
        # Differentiated over the array leaves: a model's static leaves are no JAX type.
        arrays, static = split(y)

        @jax.custom_jvp
        def corrected(arrays, args):
            return self._potential(eqx.combine(arrays, static), args, reference)

        @corrected.defjvp
        def corrected_jvp(primals, tangents):
            arrays_, args_ = primals
            field = self(0.0, eqx.combine(arrays_, static), args_)
            return corrected(arrays_, args_), -tree_vdot(field, tangents[0])

        return corrected(arrays, args)


@eqx.filter_jit
def _compiled_coefficients(corrected: CorrectedField, y: Y, args: Args) -> list[Y]:
    return corrected._coefficients(y, args)


class DrivenStepMap(AbstractStepMap):
    r"""A step map driven by a field $G_h$ instead of its loss' gradient: $\Phi_h[G_h]$.

    One call is `drive(step_map, field.evaluate, h, args)(y, h, args)`: the
    map's loss(es) replaced by a pseudo-loss whose gradient is $-G_h$
    (`field.evaluate(params, args, h)` evaluated at the same `h` as the step),
    e.g. $\theta' = \theta + h\,G_h(\theta)$ for gradient descent. With `field`
    a `CorrectedField`, this is the optimiser that follows the target flow.
    State, parameters and duration are those of `step_map`.

    **Arguments:** `step_map` (see `drive` for the supported maps); `field`,
    with a method `evaluate(params, args, h)`.
    """

    step_map: AbstractStepMap
    field: CorrectedField

    def __call__(self, y: Y, h: RealScalarLike, args: Args) -> Y:
        driven = drive(self.step_map, lambda p, a, s: self.field.evaluate(p, a, s), h, args)
        return driven(y, h, args)

    def init(self, params: Y, args: Args = None) -> Y:
        return self.step_map.init(params, args)

    def parameters(self, y: Y) -> Y:
        return self.step_map.parameters(y)

    def with_parameters(self, y: Y, params: Y) -> Y:
        return self.step_map.with_parameters(y, params)

    def duration(self, h: RealScalarLike, args: Args) -> RealScalarLike:
        return self.step_map.duration(h, args)
