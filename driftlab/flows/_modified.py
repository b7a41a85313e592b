r"""Automatic backward error analysis: the modified flow of any one-step map, to any order."""

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import jet
from jax.extend import core as jex_core
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from .._custom_types import Args, Scalar, Y
from .._errors import InputError, StabilityWarning
from ..integrators import AbstractEulerStepMap, AbstractStepMap, HeavyBall, Nesterov
from ._base import AbstractSeriesFlow, require_gradient_field, segment_potential


#: Newton iterations for the auxiliary state's fixed point at `h = 0`.
FIXED_POINT_ITERATIONS = 6
#: `I - D` counts as singular (resonance) when some `|1 - d_i|` is below this.
RESONANCE_TOLERANCE = 1e-6
#: Relative tolerance of the checks that the map is the identity in the parameters at
#: `h = 0`, that its auxiliary Jacobian is diagonal, and that the fixed point converged.
CONSISTENCY_TOLERANCE = 1e-8


def _jet_scan(primals_in, series_in, *, jaxpr, num_consts, num_carry, length, reverse, **params):
    """Taylor-mode rule for `lax.scan` (jet has none): unroll and propagate the series."""
    del params
    body = jex_core.jaxpr_as_fun(jaxpr)
    carry_end = num_consts + num_carry
    consts, carry, xs = (
        primals_in[:num_consts],
        primals_in[num_consts:carry_end],
        primals_in[carry_end:],
    )
    consts_series, carry_series = series_in[:num_consts], series_in[num_consts:carry_end]
    xs_series = series_in[carry_end:]
    ys, ys_series = [], []
    for i in reversed(range(length)) if reverse else range(length):
        x = [leaf[i] for leaf in xs]
        x_series = [[term[i] for term in terms] for terms in xs_series]
        out, out_series = jet.jet(
            body,
            (*consts, *carry, *x),
            (*consts_series, *carry_series, *x_series),
            factorial_scaled=False,  # the rules' own convention: Taylor coefficients
        )
        carry, carry_series = out[:num_carry], out_series[:num_carry]
        ys.append(out[num_carry:])
        ys_series.append(out_series[num_carry:])
    if reverse:
        ys, ys_series = ys[::-1], ys_series[::-1]
    order = len(series_in[0])
    stacked = [jnp.stack(column) for column in zip(*ys)] if ys and ys[0] else []
    stacked_series = [
        [jnp.stack([per_step[k][m] for per_step in ys_series]) for m in range(order)]
        for k in range(len(stacked))
    ]
    return [*carry, *stacked], [*carry_series, *stacked_series]


# `jax.experimental.jet` has no rule for `scan`, which `SGDEpoch` (and any map that loops
# over batches with `lax.scan`) uses; this one unrolls the loop, which is exact.
jet.jet_rules.setdefault(jax.lax.scan_p, _jet_scan)


#: What each consistency flag of an expansion means (raised as `InputError`).
_PROBLEMS = (
    "`step_map`: the Jacobian D of its auxiliary state at h = 0 has an eigenvalue 1, "
    "so I - D is singular and no slow manifold is isolated (the state is not slaved "
    "to the parameters). A step counter does this, e.g. `Adam(bias_correction=True)`, "
    "whose count makes the map non-autonomous; use `bias_correction=False`.",
    "`step_map`: the Jacobian of its auxiliary state at h = 0 is not diagonal "
    "(each auxiliary entry must decay on its own, as momentum and Adam/RMSProp "
    "moments do); ModifiedFlow's slow manifold needs a diagonal one.",
    "`step_map`: the auxiliary state has no fixed point at h = 0 that Newton's method "
    "finds from `step_map.init(params)`.",
    "`step_map` at h = 0 must leave the parameters unchanged (and its auxiliary "
    "state at its fixed point): backward error analysis needs a map that tends "
    "to the identity as h -> 0.",
)


def _checked(x, flags):
    """`x`, after raising `InputError` for each concretely set flag (`eqx.error_if` under jit)."""
    for bad, message in zip(flags, _PROBLEMS):
        if isinstance(bad, jax.core.Tracer) or isinstance(x, jax.core.Tracer):
            x = eqx.error_if(x, bad, message)
        elif bool(bad):
            raise InputError(message)
    return x


class _Layout(NamedTuple):
    """Where the parameters and the auxiliary state sit in the ravelled map state."""

    theta_index: np.ndarray
    aux_index: np.ndarray
    unravel: Callable


def _layout(step: AbstractStepMap, template: Y, params: Y) -> _Layout:
    flat_template, unravel = ravel_pytree(template)
    size = flat_template.size
    num_params = sum(np.size(leaf) for leaf in jtu.tree_leaves(params))
    # Mark the parameters 1..n, in ravel order (numpy, so that it stays concrete under `jit`).
    param_leaves, param_def = jtu.tree_flatten(params)
    ends = np.cumsum([np.size(leaf) for leaf in param_leaves])
    marks = np.split(np.arange(1, num_params + 1, dtype=np.float64), ends[:-1])
    marked_params = jtu.tree_unflatten(
        param_def, [m.reshape(np.shape(leaf)) for m, leaf in zip(marks, param_leaves)]
    )
    zeros = jtu.tree_map(lambda x: np.zeros(np.shape(x)), template)
    leaves = jtu.tree_leaves(step.with_parameters(zeros, marked_params))
    try:
        marks = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    except (TypeError, jax.errors.TracerArrayConversionError) as error:
        raise InputError(
            "`step_map.with_parameters` must place the parameters into the state "
            "unchanged (a PyTree substitution)."
        ) from error
    positions = np.flatnonzero(marks)
    if marks.size != size or positions.size != num_params:
        raise InputError(
            "`step_map.with_parameters(state, params)` must hold the parameters as "
            f"leaves of the state: found {positions.size} of {num_params} parameters."
        )
    theta_index = positions[np.argsort(marks[positions])]
    aux_index = np.setdiff1d(np.arange(size), theta_index)
    return _Layout(theta_index, aux_index, unravel)


def _taylor_step(map_flat, u, coefficients, order: int):
    r"""$\Phi_h(u(h))$ in Taylor coefficients: $u(h) = u + \sum_{m=1}^{K} c_m h^m$, at $h = 0$.

    `coefficients=None` means a constant `u`: only the map's own `h` is expanded.
    `jet` is called with `factorial_scaled=False`, so its series are Taylor
    coefficients (not derivatives) in and out.
    """
    zero = jnp.zeros((), u.dtype)
    h_series = [jnp.ones((), u.dtype)] + [zero] * (order - 1)
    if coefficients is None:
        return jet.jet(lambda h: map_flat(u, h), (zero,), (h_series,), factorial_scaled=False)
    return jet.jet(map_flat, (u, zero), (list(coefficients), h_series), factorial_scaled=False)


def _weighted_iterates(map_flat, u, coefficients, order: int, weights: np.ndarray):
    r"""$\sum_{j \ge 1} w_j c_{j,m}$ over the Taylor coefficients $c_{j,m}$ of $\Phi_h^j(u(h))$.

    Iterate $j$ is fed iterate $j - 1$'s series, so each costs one jet. Iterates
    $2, 3, \ldots$ run in a `lax.scan` (one compiled jet for all of them), with the
    weighted sum accumulated in the carry (memory: `order` state vectors).

    **Returns:** the primal of the first iterate ($\Phi_0(u(0))$) and the sums.
    """
    first, coefficients = _taylor_step(map_flat, u, coefficients, order)
    sums = [weights[0] * c for c in coefficients]

    def body(carry, weight):
        u, coefficients, sums = carry
        u, coefficients = _taylor_step(map_flat, u, coefficients, order)
        return (u, coefficients, [s + weight * c for s, c in zip(sums, coefficients)]), None

    if len(weights) > 1:
        rest = jnp.asarray(weights[1:], dtype=u.dtype)
        sums = jax.lax.scan(body, (first, coefficients, sums), rest)[0][2]
    return first, sums


def _euler_weighted_iterates(field_flat, u, order: int, weights: np.ndarray):
    r"""`_weighted_iterates` for an explicit Euler map $\Phi_h(y) = y + h\,G(y)$.

    With $y_j(h) = u + \sum_{k=1}^{K} c_{j,k} h^k$ ($K$ = `order`), the recursion is
    $c_{j+1,k} = c_{j,k} + [G(y_j)]_{k-1}$, with $[\cdot]_m$ the $h^m$ Taylor
    coefficient: a jet of $G$ of order $K - 1$, one less than the map's own. At
    $K = 2$ that jet is linear in $c_{j,1}$, so one linearisation of $G$ at $u$
    serves every iterate.
    """
    g0, linear = jax.linearize(field_flat, u)
    zero = jnp.zeros_like(u)
    coefficients = [g0] + [zero] * (order - 1)
    sums = [weights[0] * c for c in coefficients]

    def body(carry, weight):
        coefficients, sums = carry
        if order == 1:
            higher = []
        elif order == 2:
            higher = [linear(coefficients[0])]
        else:
            higher = jet.jet(field_flat, (u,), (coefficients[:-1],), factorial_scaled=False)[1]
        coefficients = [coefficients[0] + g0, *(c + g for c, g in zip(coefficients[1:], higher))]
        return (coefficients, [s + weight * c for s, c in zip(sums, coefficients)]), None

    if len(weights) > 1:
        rest = jnp.asarray(weights[1:], dtype=u.dtype)
        sums = jax.lax.scan(body, (coefficients, sums), rest)[0][1]
    return sums


def _difference_weights(n: int) -> np.ndarray:
    r"""$\Delta^n y_0 = \sum_{j=0}^n (-1)^{n-j}\binom{n}{j} y_j$: the weights."""
    return np.array([(-1) ** (n - j) * math.comb(n, j) for j in range(n + 1)], dtype=np.float64)


def _log_weights(n: int) -> np.ndarray:
    r"""Weights $w_j$ with $\sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\Delta^k y_0 = \sum_j w_j y_j$."""
    weights = np.zeros(n + 1)
    for k in range(1, n + 1):
        weights[: k + 1] += (-1) ** (k + 1) / k * _difference_weights(k)
    return weights


def _slow_manifold(map_flat, u0, layout: _Layout, order: int):
    r"""The slow state over `params` as a series $a_0 + a_1 h + \dots + a_p h^p$.

    $a_0$ is the fixed point of the auxiliary map at $h = 0$ (Newton). The
    invariant curve $Z(s)$, $Z(s+1) = \Phi_h(Z(s))$, has $Z_k = O(h^k)$, so its
    integer samples, the iterates, satisfy $\Delta^{i+1} y_0 = O(h^{i+1})$. The
    $h^i$ coefficient of the auxiliary part of $\Delta^{i+1} y_0$ is linear in
    $a_i$ with matrix $(D - I)^{i+1}$ (D: the auxiliary Jacobian at $h = 0$) plus
    terms in $a_0..a_{i-1}$, so one pass of $i + 1$ iterates at Taylor order $i$
    gives $a_i$ exactly.

    **Returns:** `(u0, series, flags)`: the state at the fixed point, the full-size
    coefficient vectors $a_1..a_p$ (zero on the parameters), and the first three
    consistency flags of `_PROBLEMS`.
    """
    aux_index = layout.aux_index
    zero = jnp.zeros((), u0.dtype)

    def aux_map(a):
        return map_flat(u0.at[aux_index].set(a), zero)[aux_index]

    a = u0[aux_index]
    ones = jnp.ones_like(a)
    for _ in range(FIXED_POINT_ITERATIONS):
        value, d = jax.jvp(aux_map, (a,), (ones,))
        a = a - (a - value) / (1 - d)
    value, d = jax.jvp(aux_map, (a,), (ones,))
    probe = jnp.cos(1.0 + jnp.arange(a.size, dtype=a.dtype) * 0.7548776662466927)
    off_diagonal = jnp.linalg.norm(jax.jvp(aux_map, (a,), (probe,))[1] - d * probe)
    scale = 1 + jnp.max(jnp.abs(d))
    flags = [
        jnp.min(jnp.abs(1 - d)) < RESONANCE_TOLERANCE,
        off_diagonal > CONSISTENCY_TOLERANCE * scale * jnp.linalg.norm(probe),
        jnp.linalg.norm(a - value) > CONSISTENCY_TOLERANCE * (1 + jnp.linalg.norm(a)),
    ]
    u0 = u0.at[aux_index].set(a)
    series = []
    for i in range(1, order + 1):
        weights = _difference_weights(i + 1)[1:]
        _, sums = _weighted_iterates(map_flat, u0, [*series, jnp.zeros_like(u0)], i, weights)
        residual = sums[-1][aux_index]
        series.append(jnp.zeros_like(u0).at[aux_index].set(-residual / (d - 1) ** (i + 1)))
    return u0, series, flags


def _existence_bound(step: AbstractStepMap) -> float | None:
    r"""The largest $h\lambda$ with a real slow root on a quadratic, for momentum maps.

    Heavy-ball: the roots of $r^2 - (1+\beta-h\lambda) r + \beta$ are real while
    $h\lambda < (1-\sqrt\beta)^2$. Nesterov (optax form): those of
    $r^2 - (1+\beta)(1-h\lambda) r + \beta(1-h\lambda)$, while
    $h\lambda < ((1-\beta)/(1+\beta))^2$.
    """
    if isinstance(step, HeavyBall):
        return float((1 - np.sqrt(float(step.beta))) ** 2)
    if isinstance(step, Nesterov):
        beta = float(step.beta)
        return ((1 - beta) / (1 + beta)) ** 2
    return None


class ModifiedFlow(AbstractSeriesFlow):
    r"""The modified flow of any one-step map, to any order, by automatic differentiation.

    For a map $\Phi_h$ that tends to the identity as $h \to 0$, the modified
    field $f_h = f_0 + h f_1 + \dots + h^p f_p$ is the one whose exact flow over
    the map's duration $\tau h$ ($\tau = 1$ for one step, $\tau = m$ for an
    epoch of $m$ batches) matches $\Phi_h$ to $O(h^{p+2})$. With the iterates
    $y_j = \Phi_h^j(y)$ and forward differences $\Delta^n y_0$ (the logarithm
    of the shift operator along the iterates, $\Phi_h = \exp(\tau h f_h)$):

    $$\tau h\, f_h(y) = \sum_{n=1}^{p+1} \frac{(-1)^{n+1}}{n}\,\Delta^n y_0 + O(h^{p+2}),$$

    and $f_k$ is exactly the coefficient of $h^{k+1}$ of the right-hand side
    divided by $\tau$ (the $h$-coefficient of $y_j$ is a polynomial of degree
    $\le m$ in $j$, so differences beyond $p + 1$ do not reach $h^{p+1}$).
    The coefficients are Taylor coefficients in $h$ at $h = 0$, taken by
    Taylor-mode AD (`jax.experimental.jet`) through $p + 1$ applications of
    the map, each fed the previous one's series (one jet of order $p + 1$ per
    iterate; the first one expands only the map's own $h$). For an
    `AbstractEulerStepMap` ($y + h\,G(y)$: `GradientDescent`, `SimultaneousGD`,
    `ExplicitEuler`) only $G$ is expanded, to order $p$, and at order 1 one
    linearisation of $G$ serves every iterate, so order 1 costs what the
    hand-written `IGRFlow` field costs. Nothing is differentiated numerically,
    nothing is symbolic, nothing is dense; the cost grows polynomially in $p$
    (at most like $p^3$ gradients: $p + 1$ jets whose cost per primitive is at
    most quadratic in their order; measured in `benchmarks/performance.py`).
    The alternating sums lose about two digits by order 6.

    **Maps with auxiliary state** (`HeavyBall`, `Nesterov`, `RMSProp`,
    `Adam(bias_correction=False)`, or any map whose state holds more than the
    parameters): the auxiliary part $a$ does not tend to the identity, but
    decays to a fixed point at $h = 0$ ($a' = D a + \ldots$, $D$ diagonal with
    entries $\ne 1$). Then the flow acts on the **parameters** on the slow
    invariant manifold, where the auxiliary state is slaved to them
    (Kovachki & Stuart 2021; Ghosh et al. 2023). The slow state
    $a(\theta) = a_0 + h a_1 + \dots + h^p a_p$ is found from the invariant
    curve $Z(s + 1) = \Phi_h(Z(s))$, $Z_k = O(h^k)$, sampled at the
    iterates: the $h^i$ coefficient of $\Delta^{i+1}$ of the auxiliary iterates
    must vanish, which is linear in $a_i$ with matrix $(D - I)^{i+1}$; then
    the formula above applies to the parameter part of the iterates started
    on the slow manifold. `slow_state(params, args)` returns that state: start
    the map there to see local errors $O(h^{p+2})$ (from any other state the
    fast part decays like $D^n$ and adds an $O(h)$ transient).
    $D$ is detected matrix-free at $h = 0$; `I - D` must be invertible
    (no resonance), which rules out step counters (`Adam` with bias correction).
    The slow manifold exists only for small enough $h$: on a quadratic with
    curvature $\lambda$, heavy-ball needs $h\lambda < (1 - \sqrt\beta)^2$ and
    Nesterov $h\lambda < ((1-\beta)/(1+\beta))^2$; beyond, the series is
    formal and the map has no real slow flow (`slow_state` warns).

    **Arguments:**

    - `step_map`: any `driftlab.AbstractStepMap`, smooth in its state and `h`,
      built from operations `jax.experimental.jet` supports (`lax.scan` is
      unrolled; `while_loop` is not supported).
    - `h`: the step size the field is modified for.
    - `order`: $p$, the highest power of $h$ kept.

    The flow is called as `flow(t, params, args)`; `coefficients(params, args)`
    returns $[f_0, \dots, f_p]$. For maps without auxiliary state the
    parameters are the whole state.

    ??? cite "References"
        ```bibtex
        @book{hairer2006geometric,
          title={Geometric Numerical Integration},
          author={Hairer, Ernst and Lubich, Christian and Wanner, Gerhard},
          edition={2},
          publisher={Springer},
          year={2006},
          note={Chapter IX: backward error analysis}
        }
        @article{kovachki2021continuous,
          title={Continuous Time Analysis of Momentum Methods},
          author={Kovachki, Nikola B. and Stuart, Andrew M.},
          journal={Journal of Machine Learning Research},
          volume={22},
          number={17},
          year={2021}
        }
        @inproceedings{ghosh2023implicit,
          title={Implicit regularization in Heavy-ball momentum accelerated
                 stochastic gradient descent},
          author={Ghosh, Avrajit and Lyu, He and Zhang, Xitong and Wang, Rongrong},
          booktitle={International Conference on Learning Representations},
          year={2023}
        }
        ```
    """

    step_map: AbstractStepMap
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.step_map, AbstractStepMap):
            raise InputError(
                "`step_map` must be a driftlab.AbstractStepMap, got "
                f"{type(self.step_map).__name__}."
            )

    def coefficients(self, y: Y, args: Args) -> list[Y]:
        r"""$[f_0(y), \dots, f_p(y)]$, each with the PyTree structure of the parameters `y`.

        **Raises:** `InputError` if the map is not the identity in the
        parameters at $h = 0$, or (auxiliary state) if $I - D$ is singular or
        $D$ not diagonal; under `jit` these become runtime errors.
        """
        fields, flags = _expand(self, y, args, "coefficients")
        unravel_params = ravel_pytree(y)[1]
        return [unravel_params(f) for f in _checked(fields, flags)]

    def slow_state(self, params: Y, args: Args) -> Y:
        r"""The map's full state over `params` on the slow manifold, to $O(h^{p+1})$.

        $a(\theta) = a_0 + h a_1 + \dots + h^p a_p$ with `h = self.h`; for maps
        without auxiliary state this is `step_map.init(params, args)`.

        **Warns:** `StabilityWarning` for heavy-ball and Nesterov when
        $h\lambda_{max}$ is beyond the region where a real slow manifold exists
        (checked only outside `jit`).

        **Raises:** `InputError` as `coefficients` does.
        """
        state, flags = _expand(self, params, args, "slow_state")
        state = _checked(state, flags[:3])
        bound = _existence_bound(self.step_map)
        if bound is not None and not isinstance(self.h, jax.core.Tracer):
            from ..analysis._spectra import lambda_max

            curvature = lambda_max(self.step_map.loss, params, args)
            if float(self.h) * curvature >= bound:
                warnings.warn(
                    f"h * lambda_max = {float(self.h) * curvature:.3g} >= {bound:.3g}: "
                    f"{type(self.step_map).__name__} has no real slow manifold there (its "
                    "two roots are complex on the top curvature direction); the series "
                    "is formal and the iterates do not follow a first-order flow.",
                    StabilityWarning,
                    stacklevel=2,
                )
        return _layout(self.step_map, self.step_map.init(params, args), params).unravel(state)

    def modified_loss(self, y: Y, args: Args, *, reference: Y | None = None) -> Scalar:
        r"""The modified loss $\tilde L_h$ with $f_h = -\nabla\tilde L_h$ and $\tilde L_h(r) = 0$.

        $$\tilde L_h(y) = -\int_0^1 f_h\big(r + s (y - r)\big)\cdot(y - r)\,ds,$$

        by Gauss–Legendre quadrature with `QUADRATURE_NODES` nodes along the
        segment from the `reference` point $r$ (default: the origin) to $y$.
        When every coefficient is a gradient this is the potential of the
        truncated field, with the constant fixed by $\tilde L_h(r) = 0$; e.g.
        for gradient descent at order 1 it is
        $L(y) + \frac h4\|\nabla L(y)\|^2 - (L(r) + \frac h4\|\nabla L(r)\|^2)$.
        The quadrature is exact for polynomial fields (quadratic losses) up to
        degree 31 along the segment and spectrally accurate for analytic ones.

        **Raises:** `InputError` when the field is not a gradient at `y`
        (checked with `is_gradient_field`, outside `jit` only): games, SGD
        epochs with fixed batch order.
        """
        require_gradient_field(
            self, y, args, "the antisymmetric part of its Jacobian is its non-gradient drift."
        )
        if reference is None:
            reference = jtu.tree_map(jnp.zeros_like, y)
        return segment_potential(lambda point: self(0.0, point, args), y, reference)


@eqx.filter_jit
def _expand(flow: ModifiedFlow, params: Y, args: Args, what: str):
    """The ravelled coefficients `[f_0..f_p]` (or the ravelled slow state) and the flags.

    Compiled once per map, order and shapes; `ModifiedFlow` checks the flags.
    """
    step = flow.step_map
    template = step.init(params, args)
    layout = _layout(step, template, params)
    u0 = ravel_pytree(template)[0].at[layout.theta_index].set(ravel_pytree(params)[0])

    def map_flat(u, h):
        return ravel_pytree(step(layout.unravel(u), h, args))[0]

    series, flags = [], [jnp.asarray(False)] * 3
    if layout.aux_index.size:
        u0, series, flags = _slow_manifold(map_flat, u0, layout, flow.order)
    if what == "slow_state":
        return u0 + sum(flow.h ** (i + 1) * s for i, s in enumerate(series)), flags
    order = flow.order + 1
    weights = _log_weights(order)[1:]
    if isinstance(step, AbstractEulerStepMap):
        # y + h G(y) is the identity at h = 0 by construction and has no auxiliary state.
        field_flat = lambda u: ravel_pytree(step.euler_field(layout.unravel(u), args))[0]
        sums = _euler_weighted_iterates(field_flat, u0, order, weights)
        moved = jnp.asarray(False)
    else:
        start = [*series, jnp.zeros_like(u0)] if layout.aux_index.size else None
        first, sums = _weighted_iterates(map_flat, u0, start, order, weights)
        moved = jnp.linalg.norm(first - u0) > CONSISTENCY_TOLERANCE * (1 + jnp.linalg.norm(u0))
    rate = step.duration(1.0, args)
    return [log_term[layout.theta_index] / rate for log_term in sums], [*flags, moved]
