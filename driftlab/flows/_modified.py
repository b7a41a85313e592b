r"""Automatic backward error analysis: the modified flow of any one-step map, to any order."""

import math

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import ravel, split, tree_scale, zeros_like
from ..integrators import AbstractEulerStepMap, AbstractStepMap
from ..integrators._iterate import check_parameters
from ..integrators._layout import state_layout
from ..integrators._schedules import check_time
from ..integrators._validity import (
    has_auxiliary_state,
    is_concrete,
    region_problem,
    series_problem,
    warn_outside_region,
)
from ._base import (
    AbstractSeriesFlow,
    require_gradient_field,
    segment_potential,
    series_in_h,
)
from ._taylor import (
    checked,
    CONSISTENCY_TOLERANCE,
    euler_weighted_iterates,
    log_weights,
    slow_manifold,
    weighted_iterates,
)


#: Orders up to this one trace and compile in seconds (measured up to 8 on small MLPs).
ORDERS_NOT_CHECKED = 8
#: The most traced operations an expansion may have (its compilation's time and memory).
MAX_TRACED_OPERATIONS = 200_000


def _count_operations(jaxpr) -> int:
    """The equations of `jaxpr`, including those of its sub-jaxprs (loops, conds, calls)."""
    total = 0
    for equation in jaxpr.eqns:
        total += 1
        for sub in jax.extend.core.jaxprs_in_params(equation.params):
            total += _count_operations(sub)
    return total


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
    `AbstractEulerStepMap` ($y + h\,G(y)$: `GradientDescent`, `SGD`, `SimultaneousGD`,
    `ExplicitEuler`) only $G$ is expanded, to order $p$, and at order 1 one
    linearisation of $G$ serves every iterate, so order 1 costs what the
    hand-written `IGRFlow` field costs; at order 2 four products do ($g = G(y)$,
    $Jg$, $J^2 g$ and $G''(g, g)$: 6 to 7 gradients of FLOPs as XLA compiles them,
    4 to 9 in time at $10^4$ to $10^6$ parameters, `benchmarks/scale.py`). $G$ is
    expanded on the parameters' own arrays, not on one ravelled vector. Nothing is
    differentiated numerically, nothing is symbolic, nothing is dense; the cost
    grows polynomially in $p$ (at most like $p^3$ gradients: $p + 1$ jets whose
    cost per primitive is at most quadratic in their order; measured in
    `benchmarks/performance.py`).
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
    (no resonance), which rules out accumulators that do not decay (adagrad).
    Step counters are carried, not expanded: a bias correction $1/(1 - b^n)$
    differs from 1 by $O(b^{t/h})$, beyond all orders, so the flow is that of the
    uncorrected map after burn-in (see `driftlab.OptaxStepMap`).
    The slow manifold exists only for small enough $h$: on a quadratic with
    curvature $\lambda$, heavy-ball needs $h\lambda < (1 - \sqrt\beta)^2$ and
    Nesterov $h\lambda < ((1-\beta)/(1+\beta))^2$; beyond, the series is
    formal and the map has no real slow flow. `outside_region` measures this for
    any map on its linearisation (slow and fast eigenvalues must stay apart);
    the field and `slow_state` warn (`StabilityWarning`) outside the region, and
    the measurements of `driftlab.analysis` refuse such points.

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

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        r"""$f_h(t, y)$: for a time-dependent map (`step_map.time` not `None`) at $\tau = t$.

        Autonomous maps ignore `t`. (Overrides `AbstractSeriesFlow.__call__`, which
        drops `t`: the one series flow whose coefficients depend on time.)
        """
        return series_in_h(self.coefficients(y, args, t=t), self.h)

    def check_order_fits(self, params: Y, args: Args) -> None:
        r"""Raise `InputError` if this `order` would not trace and compile in reasonable time.

        Orders up to `ORDERS_NOT_CHECKED` pass unchecked. Above, the expansion is traced
        (not compiled, not run) at order 2 and its operations counted, $E_2$; the $p + 1$
        jets, each at most quadratic in its order per primitive, bound the count at order
        $p$ by $E_2\,((p + 1)/3)^3$ (measured growth is slower: about $p^{1.6}$ for GD,
        $p^2$ for heavy-ball; GD's order 6 on a 433-parameter MLP traces about 1,250
        operations and compiles in seconds). Beyond `MAX_TRACED_OPERATIONS` the order is
        refused, naming the largest that fits (never below `ORDERS_NOT_CHECKED`). The
        compiler's time and memory, not the run's arrays, are what explodes: order 100
        of GD on a 433-parameter MLP ran 9 minutes and reached 16.5 GB before it was
        stopped.
        """
        if self.order <= ORDERS_NOT_CHECKED:
            return
        probe = ModifiedFlow(self.step_map, self.h, 2)
        jaxpr = eqx.filter_make_jaxpr(lambda p: _expand(probe, p, args, "coefficients"))(params)
        at_two = _count_operations(jaxpr[0].jaxpr)
        bound = at_two * ((self.order + 1) / 3) ** 3
        if bound > MAX_TRACED_OPERATIONS:
            fits = math.floor(3 * (MAX_TRACED_OPERATIONS / at_two) ** (1 / 3)) - 1
            largest = max(fits, ORDERS_NOT_CHECKED)
            raise InputError(
                f"`order`={self.order} of {type(self.step_map).__name__} would trace up to "
                f"{bound:.2g} operations ({at_two} at order 2, growing at most like "
                f"(order + 1)^3), more than the {MAX_TRACED_OPERATIONS:.0e} allowed (compile "
                "time and memory grow with them); the largest order that fits here is "
                f"{largest}. The alternating sums also lose about 0.3 digits per order."
            )

    def coefficients(self, y: Y, args: Args, *, t: RealScalarLike | None = None) -> list[Y]:
        r"""$[f_0(y), \dots, f_p(y)]$, each with the PyTree structure of the parameters `y`.

        For a time-dependent map (`driftlab.Scheduled`, `driftlab.AdamODE`) the
        coefficients are those at time $\tau = t$ (default: the map's initial time,
        $\tau = 0$); autonomous maps ignore `t`.

        **Raises:** `InputError` if `y` is an optimiser state instead of the
        parameters, if the map is not the identity in the
        parameters at $h = 0$, or (auxiliary state) if $I - D$ is singular or
        $D$ not diagonal; under `jit` these become runtime errors. Before any
        number, `step_map.check_expansion` raises for updates with no series in
        $h$ (non-smooth, non-decaying or time-dependent optax transformations),
        and the map's step counters are checked to enter only bias corrections.
        """
        check_parameters(self.step_map, y, args)
        self.step_map.check_expansion(y, self.h, args)
        self.check_order_fits(y, args)
        t = check_time(self.step_map, t, y, args)
        # The coefficients do not depend on h: only the linearisation's region is warned
        # here; the slow state's expansion at this h is checked where it is used.
        warn_outside_region(self._linear_region_problem(y, args, t))
        # Fields have the parameters' structure with `None` at a model's static leaves.
        return checked(*_expand(self, y, args, "coefficients", t))

    def slow_state(self, params: Y, args: Args, *, t: RealScalarLike | None = None) -> Y:
        r"""The map's full state over `params` on the slow manifold, to $O(h^{p+1})$.

        $a(\theta) = a_0 + h a_1 + \dots + h^p a_p$ with `h = self.h`; for maps
        without auxiliary state this is `step_map.init(params, args)`.

        A time-dependent map's state is placed at time $\tau = t$.

        **Warns:** `StabilityWarning` where the map has no slow manifold at this
        `h` (see `outside_region`; checked only outside `jit`).

        **Raises:** `InputError` as `coefficients` does.
        """
        check_parameters(self.step_map, params, args, "params")
        self.step_map.check_expansion(params, self.h, args)
        self.check_order_fits(params, args)
        t = check_time(self.step_map, t, params, args)
        state = self._slow_state(params, args, t)
        warn_outside_region(region_problem(self.step_map, state, self.h, args))
        return state

    def _slow_state(self, params: Y, args: Args, t=None) -> Y:
        state, flags = _expand(self, params, args, "slow_state", t)
        state = checked(state, flags[:3])
        layout = state_layout(self.step_map, self.step_map.init(params, args), params, args)
        return layout.unravel(state)

    def outside_region(
        self, params: Y, args: Args, *, t: RealScalarLike | None = None
    ) -> str | None:
        r"""Whether the map's slow manifold exists at `params` and `h`, measured.

        The eigenvalues of the map's Jacobian at its fixed point over `params`
        (the slow state at order 0): the slow manifold exists while the
        $n_\theta$ slow ones stay larger in modulus than the fast ones of the
        auxiliary state (`None` then, and for maps without auxiliary state).
        Then the slow state's expansion must be valid at this `h`: its corrections
        (to order $\max(p, 1)$) must stay below the leading term in every entry of
        a second moment (`driftlab.integrators._validity.series_problem`: Adam with
        its default $b_2 = 0.999$ needs $h$ small against $1 - b_2$).
        """
        problem = self._linear_region_problem(params, args, t)
        if problem is not None or not self._has_region(params, args):
            return problem
        state = ModifiedFlow(self.step_map, self.h, 0)._slow_state(params, args, t)
        order = max(self.order, 1)
        corrected = ModifiedFlow(self.step_map, self.h, order)._slow_state(params, args, t)
        return series_problem(self.step_map, state, corrected, self.h, args, order)

    def _has_region(self, params: Y, args: Args) -> bool:
        return is_concrete(params, self.h) and has_auxiliary_state(
            self.step_map, self.step_map.init(params, args)
        )

    def _linear_region_problem(
        self, params: Y, args: Args, t: RealScalarLike | None = None
    ) -> str | None:
        """The first part of `outside_region`: the eigenvalues of the linearisation."""
        if not self._has_region(params, args):
            return None
        state = ModifiedFlow(self.step_map, self.h, 0)._slow_state(params, args, t)
        return region_problem(self.step_map, state, self.h, args)

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
            reference = zeros_like(y)
        return segment_potential(lambda point: self(0.0, point, args), y, reference)


@eqx.filter_jit
def _expand(flow: ModifiedFlow, params: Y, args: Args, what: str, t=None):
    """The coefficients `[f_0..f_p]` (or the ravelled slow state) and the flags.

    Compiled once per map, order and shapes; `ModifiedFlow` checks the flags. `t`:
    the time of a time-dependent map's state (`None` for autonomous maps).
    """
    step = flow.step_map
    template = step.init(params, args)
    if t is not None:
        template = step.with_time(template, t)
    order = flow.order + 1
    weights = log_weights(order)[1:]
    rate = step.duration(1.0, args)
    arrays, static = split(params)
    is_params = jtu.tree_structure(template) == jtu.tree_structure(params)
    if what == "coefficients" and isinstance(step, AbstractEulerStepMap) and is_params:
        # y + h G(y): G is expanded on the parameters' own arrays.
        field = lambda a: split(step.euler_field(eqx.combine(a, static), args))[0]
        sums = euler_weighted_iterates(field, arrays, order, weights)
        # Nothing to flag: no auxiliary state, and the identity at h = 0 by construction.
        return [tree_scale(1 / rate, log_term) for log_term in sums], []
    layout = state_layout(step, template, params, args)
    u0 = layout.ravel(template).at[layout.theta_index].set(ravel(params)[0])

    def map_flat(u, h):
        return layout.ravel(step(layout.unravel(u), h, args))

    series, flags = [], [jnp.asarray(False)] * 3
    if layout.aux_index.size:
        u0, series, flags = slow_manifold(map_flat, u0, layout, flow.order)
    if what == "slow_state":
        return u0 + sum(flow.h ** (i + 1) * s for i, s in enumerate(series)), flags
    start = [*series, jnp.zeros_like(u0)] if layout.aux_index.size else None
    first, sums = weighted_iterates(map_flat, u0, start, order, weights)
    moved = jnp.linalg.norm(first - u0) > CONSISTENCY_TOLERANCE * (1 + jnp.linalg.norm(u0))
    unravel_arrays = ravel(arrays)[1]
    coefficients = [unravel_arrays(log_term[layout.theta_index] / rate) for log_term in sums]
    return coefficients, [*flags, moved]
