"""Stochastic modified equations of minibatch optimisers as diffrax drift and diffusion terms."""

import abc
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from equinox import AbstractVar
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_float64_tree, check_step_size, InputError
from .._tree import grad, gradient_function, split, tree_vdot
from ..integrators._maps import (
    _preconditioned,
    Adam,
    AdamState,
    HeavyBall,
    Nesterov,
    RMSProp,
    RMSPropState,
)
from ..integrators._random import (
    AbstractRandomBatchMap,
    check_loss,
    check_sampling,
    covariance_factor,
    num_units,
    RandomBatch,
    RandomBatchSGD,
    unit_losses,
)
from ..integrators._solve import _OnArrays
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]


_SAMPLING = ("batch_size", "replacement", "examples")


class AbstractStochasticModifiedEquation(AbstractFlow):
    r"""An SDE $\mathrm dY = b_h\,\mathrm dt + \sqrt h\,\sigma\,\mathrm dW$ of a minibatch map.

    A minibatch optimiser $y_{n+1} = y_n + h F_h(y_n, B_n)$ (random batch $B_n$,
    time $t = nh$) has, by matching the first two moments of one step (Milstein's
    theorem; Li, Tai & E 2019), the weak order-1 SDE with drift
    $b = \mathbb E_B F_0$ and $\sigma\sigma^\top = \operatorname{Cov}_B F_0$, and the
    order-2 SDE with drift $b_0 + h\bigl(\mathbb E_B F_1 - \tfrac12 b_0'b_0\bigr)$ and
    the same noise. The noise is matrix-free: $\sigma$ is the $P\times N$ matrix
    $\sqrt{c/N}\,[F_0(y, k) - \bar F_0]_{k=1}^N$ of the centred per-unit increments
    (`unit_increments`) on an $N$-dimensional Brownian motion, so that
    $h\sigma\sigma^\top$ is $h$ times the increment's covariance over one sampling
    unit, scaled by the sampling model's factor $c$ (`covariance_factor`); no
    $P\times P$ matrix is formed.

    Subclasses give the drift (`__call__`), `unit_increments`, how the map's state
    maps to the SDE's (`observe`), and `check_map`, which refuses a map whose
    hyperparameters follow another scaling. `driftlab.analysis.weak_error` and
    `weak_order_of_accuracy` run any subclass against its random-batch map.
    """

    loss: AbstractVar[Loss]
    data: AbstractVar[Args]
    batch_size: AbstractVar[int]
    replacement: AbstractVar[bool]
    examples: AbstractVar[bool]

    #: The weak orders a subclass implements.
    orders: eqx.AbstractClassVar[tuple[int, ...]]

    def __check_init__(self):
        check_loss(self.loss)
        if self.order not in self.orders:
            raise InputError(
                f"`order` must be one of {self.orders} (weak order) for {type(self).__name__}, "
                f"got {self.order!r}."
            )
        if not isinstance(self.h, jax.core.Tracer):
            check_step_size(self.h)
        check_sampling(self.num_noise, self.batch_size, self.replacement)

    @property
    def num_noise(self) -> int:
        """$N$, the dimension of the driving Brownian motion (the number of units)."""
        return num_units(self.data)

    @property
    def covariance_factor(self) -> float:
        r"""$c$: the minibatch gradient's covariance is $c\,\Sigma$."""
        return covariance_factor(self.num_noise, self.batch_size, self.replacement)

    def _noise_scale(self):
        return jnp.sqrt(self.h * self.covariance_factor / self.num_noise)

    def mean_loss(self, y: Y) -> Scalar:
        r"""$L = \frac1N\sum_k L_k$, the mean of the units' losses at the parameters `y`."""
        return jnp.mean(unit_losses(self.loss, y, self.data, self.examples))

    def _mean_loss(self, y: Y, args: Args) -> Scalar:
        del args
        return self.mean_loss(y)

    def unit_gradients(self, params: Y) -> Y:
        """The gradients $g_k$ of the $N$ units' losses, stacked along a leading axis."""
        arrays, static = split(params)
        return jax.jacrev(
            lambda a: unit_losses(self.loss, eqx.combine(a, static), self.data, self.examples)
        )(arrays)

    def _gradient_moments(self, params: Y):
        r"""$g$, $\bar g^2_B = g^2 + c\,\operatorname{diag}\Sigma$ and the $g_k$, leaf by leaf."""
        grads = self.unit_gradients(params)
        mean = jtu.tree_map(lambda g: jnp.mean(g, axis=0), grads)
        square = jtu.tree_map(
            lambda g, m: m**2 + self.covariance_factor * jnp.mean((g - m) ** 2, axis=0), grads, mean
        )
        return mean, square, grads

    @abc.abstractmethod
    def unit_increments(self, y: Y) -> Y:
        r"""$F_0(y, k)$ for every unit $k$: `y`'s structure with a leading axis of length $N$."""

    def observe(self, state: Y) -> Y:
        """The SDE's state read off the map's state `state` (default: all of it)."""
        return state

    @abc.abstractmethod
    def check_map(self, step_map) -> None:
        """Raise `InputError` unless `step_map` is the map this SDE models, in its scaling."""

    def check_step(self, step: AbstractRandomBatchMap) -> None:
        """Raise `InputError` unless the random-batch map `step` is this SDE's map and sampling."""
        if not isinstance(step, AbstractRandomBatchMap):
            raise InputError(
                "`step` must be a random-batch map (driftlab.integrators.RandomBatchSGD or "
                f"RandomBatch), got {type(step).__name__}."
            )
        if any(getattr(step, name) != getattr(self, name) for name in _SAMPLING):
            raise InputError(
                "`step` and `sde` assume different sampling models ("
                + ", ".join(f"{n}: {getattr(step, n)} vs {getattr(self, n)}" for n in _SAMPLING)
                + f"); build the SDE with `{type(self).__name__}.of(step, data, h, order)`."
            )
        self.check_map(step)

    def diffusion(self, t: RealScalarLike, y: Y, args: Args = None) -> Y:
        r"""$\sqrt h\,\sigma(y)$ as a PyTree: each leaf of `y` with a trailing axis of length $N$.

        Forms all $N$ unit increments; solvers use `noise` instead.
        """
        del t, args
        increments = split(self.unit_increments(y))[0]
        scale = self._noise_scale()
        return jtu.tree_map(
            lambda f: scale * jnp.moveaxis(f - jnp.mean(f, axis=0, keepdims=True), 0, -1),
            increments,
        )

    def noise(self, t: RealScalarLike, y: Y, args: Args, dw: Float[Array, " N"]) -> Y:
        r"""$\sqrt h\,\sigma(y)\,\mathrm dW$: the unit increments weighted by the centred `dw`."""
        del t, args
        weights = self._noise_scale() * (dw - jnp.mean(dw))
        increments = split(self.unit_increments(y))[0]
        return jtu.tree_map(lambda f: jnp.tensordot(weights, f, axes=1), increments)

    def brownian_motion(
        self, key, t_end: RealScalarLike, tol: RealScalarLike
    ) -> diffrax.VirtualBrownianTree:
        """The $N$-dimensional Brownian motion on $[0, t_{end}]$, resolution `tol`, from `key`."""
        return diffrax.VirtualBrownianTree(0.0, t_end, tol, (self.num_noise,), key)

    def terms(self, key, t_end: RealScalarLike, tol: RealScalarLike) -> diffrax.MultiTerm:
        """`MultiTerm(ODETerm(drift), noise)` for `diffrax.diffeqsolve` over $[0, t_{end}]$.

        The noise term is driven by `brownian_motion(key, t_end, tol)`; solve with
        an Itô solver (`diffrax.Euler`) and steps no finer than `tol`.
        """
        return _sde_terms(self, self.brownian_motion(key, t_end, tol))

    def solve(self, y0: Y, t_end: RealScalarLike, *, key, dt: RealScalarLike, ts=None):
        r"""One sample path by Euler–Maruyama with step `dt` (weak order 1 in `dt`).

        **Returns:** the state at `t_end`, or stacked at the times `ts`.
        """
        dt = check_step_size(dt, "dt")
        t_end = check_step_size(t_end, "t_end")
        check_float64_tree(y0, "y0")
        saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=jnp.asarray(ts))
        ys = _euler_solve(self, y0, t_end, dt, key, saveat, int(round(t_end / dt)) + 1)
        if ts is not None:
            return ys
        arrays, static = split(ys)
        return eqx.combine(jtu.tree_map(lambda x: x[0], arrays), static)


def _check_same(name: str, step_value, sde_value, sde, fix: str) -> None:
    if abs(float(step_value) - float(sde_value)) > 1e-12 * max(1.0, abs(float(sde_value))):
        raise InputError(
            f"`step` and `sde` assume different scalings: the map has {name}="
            f"{float(step_value):.12g} but {type(sde).__name__} assumes {name}="
            f"{float(sde_value):.12g}; {fix}"
        )


def _wrapped(step, kinds: tuple[type, ...], sde) -> object:
    """The deterministic map inside the random-batch map `step`, checked to be one of `kinds`."""
    inner = step.step_map if isinstance(step, RandomBatch) else step
    if not isinstance(inner, kinds):
        names = " or ".join(f"RandomBatch({k.__name__}(...))" for k in kinds)
        raise InputError(
            f"{type(sde).__name__} models {names}, got `step` running {type(inner).__name__}."
        )
    return inner


class StochasticModifiedEquation(AbstractStochasticModifiedEquation):
    r"""The stochastic modified equation (SME) of SGD with random minibatches, weak order 1 or 2.

    For SGD $\theta_{n+1} = \theta_n - h\,\bar g_{B_n}(\theta_n)$ whose minibatch
    gradient has mean $g = \nabla L$ and covariance $c\,\Sigma(\theta)$,
    $\Sigma = \frac1N\sum_{k=1}^N (g_k - g)(g_k - g)^\top$ over $N$ sampling
    units, in time $t = nh$ (Li, Tai & E 2017, 2019):

    - order 1: $\mathrm d\Theta = -\nabla L(\Theta)\,\mathrm dt
      + \sqrt{h c}\,\Sigma^{1/2}\,\mathrm dW$,
    - order 2: $\mathrm d\Theta = -\nabla\bigl(L + \tfrac h4\|\nabla L\|^2\bigr)(\Theta)\,\mathrm dt
      + \sqrt{h c}\,\Sigma^{1/2}\,\mathrm dW$,

    so that $|\mathbb E\varphi(\theta_n) - \mathbb E\varphi(\Theta(nh))| = O(h^p)$ for
    smooth test functions $\varphi$ (weak order $p$). Order 2 holds because the
    one-step moments agree to $O(h^3)$: the SDE's mean increment is
    $-hg - \frac{h^2}4\nabla\|g\|^2 + \frac{h^2}2 Hg + O(h^3) = -hg + O(h^3)$, its
    second moment $h^2(gg^\top + c\Sigma) + O(h^3)$, as SGD's. On linear regression
    `driftlab.analysis.sgd_moments` and `sme_moments` check this exactly (mean and
    second moment: weak slopes 2.00 and 2.03).

    **Matrix-free noise.** The diffusion is the $P\times N$ matrix
    $G(\theta) = -\sqrt{hc/N}\,[g_1 - g, \dots, g_N - g]$ driven by an
    $N$-dimensional Brownian motion: $GG^\top = hc\,\Sigma$ exactly, $\Sigma$ is never
    formed and $G$ is as smooth as the loss (unlike $\Sigma^{1/2}$). The noise term's
    `vf_prod` never forms $G$ either:
    $G\,\mathrm dW = \sqrt{hc/N}\,\nabla_\theta\sum_k (\overline{\mathrm dW} - \mathrm dW_k)
    \,L_k(\theta)$,
    one backward pass through a weighted loss.

    **Sampling models** (set by `batch_size` $b$, `replacement`, `examples`, as in
    `driftlab.integrators.RandomBatchSGD`):

    - `examples=False` (default): `data` is a stack of $N = m$ fixed batches, each
      SGD step draws one ($b = 1$, $c = 1$: Li, Tai & E's setting) or the mean of $b$.
    - `examples=True`: `data` holds $N$ examples; each step draws a minibatch of $b$
      examples: $c = 1/b$ with replacement, $c = \frac{N-b}{b(N-1)}$ without (the
      finite-population factor). The Gaussian SME matches the first two moments of
      either; sampling without replacement *within an epoch* (random reshuffling)
      is a different process with correlated steps, not modelled here.

    Called as `sde(t, y, args)` it is the drift (an `AbstractFlow`: the order-2 drift
    is the IGR flow of the full loss); `terms(key, t_end)` gives the pair of diffrax
    terms and `solve` a sample path.

    **Arguments:**

    - `loss`: called as `loss(params, batch)`.
    - `data`: the $N$ sampling units along the leading axis of every leaf.
    - `h`: the SGD step size (the SME's noise scale and drift correction).
    - `order`: 1 or 2.
    - `batch_size`, `replacement`, `examples`: the sampling model, see above.

    ??? cite "Reference"
        ```bibtex
        @article{li2019stochastic,
          title={Stochastic Modified Equations and Dynamics of Stochastic Gradient
                 Algorithms {I}: Mathematical Foundations},
          author={Li, Qianxiao and Tai, Cheng and E, Weinan},
          journal={Journal of Machine Learning Research},
          volume={20},
          number={40},
          pages={1--47},
          year={2019}
        }
        @inproceedings{li2017stochastic,
          title={Stochastic Modified Equations and Adaptive Stochastic Gradient Algorithms},
          author={Li, Qianxiao and Tai, Cheng and E, Weinan},
          booktitle={International Conference on Machine Learning},
          pages={2101--2110},
          year={2017}
        }
        ```
    """

    loss: Loss
    data: Args
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: int = eqx.field(static=True, default=1)
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    orders = (1, 2)

    @classmethod
    def of(cls, step: RandomBatchSGD, data: Args, h: RealScalarLike, order: int = 1):
        """The SME of the random-batch SGD map `step` on `data`, with its sampling model."""
        _check_random_batch_sgd(step)
        return cls(step.loss, data, h, order, step.batch_size, step.replacement, step.examples)

    def __call__(self, t: RealScalarLike, y: Y, args: Args = None) -> Y:
        r"""The drift: $-\nabla L$ (order 1) or $-\nabla L - \frac h2 H\nabla L$ (order 2)."""
        del t, args
        arrays, grad_fn = gradient_function(self._mean_loss, y, None)
        gradient, hvp = jax.linearize(grad_fn, arrays)
        if self.order == 1:
            return jtu.tree_map(jnp.negative, gradient)
        return jtu.tree_map(lambda g, hg: -g - 0.5 * self.h * hg, gradient, hvp(gradient))

    def modified_loss(self, y: Y, args: Args = None) -> Scalar:
        del args
        if self.order == 1:
            return self.mean_loss(y)
        gradient = grad(self._mean_loss, y, None)
        return self.mean_loss(y) + 0.25 * self.h * tree_vdot(gradient, gradient)

    def unit_increments(self, y: Y) -> Y:
        r"""$F_0(\theta, k) = -g_k$: minus each unit's gradient."""
        return jtu.tree_map(jnp.negative, self.unit_gradients(y))

    def noise(self, t: RealScalarLike, y: Y, args: Args, dw: Float[Array, " N"]) -> Y:
        r"""$G(\theta)\,\mathrm dW$ without forming $G$: one gradient of a weighted loss."""
        del t, args
        weights = jnp.mean(dw) - dw
        weighted = lambda p, _: jnp.dot(
            weights, unit_losses(self.loss, p, self.data, self.examples)
        )
        return jtu.tree_map(lambda g: self._noise_scale() * g, grad(weighted, y, None))

    def check_map(self, step_map) -> None:
        _check_random_batch_sgd(step_map)


def _check_random_batch_sgd(step) -> None:
    if not isinstance(step, RandomBatchSGD):
        raise InputError(
            f"`step` must be a driftlab.integrators.RandomBatchSGD, got {type(step).__name__}."
        )


class MomentumSME(AbstractStochasticModifiedEquation):
    r"""The weak order-1 SME of minibatch heavy-ball and Nesterov momentum at fixed $\beta$.

    **Scaling.** $\beta$ is held fixed as $h \to 0$ (Li, Tai & E 2019, §5): the
    buffer $m$ relaxes in $O(1)$ steps, a time $O(h)$, so it is a fast variable
    whose law has no continuous limit, and the SDE is one for $\theta$ alone
    (`observe` reads `state.params`; test functions see the parameters).

    For heavy-ball $m' = \beta m + \bar g_B$, $\theta' = \theta - hm'$ and for
    Nesterov $\theta' = \theta - h(\bar g_B + \beta m')$ (driftlab's `HeavyBall`,
    `Nesterov`), summing the geometric series of the buffer gives the same
    effective step $h/(1-\beta)$ for both, and in time $t = nh$

    $$\mathrm d\Theta = -\frac{\nabla L(\Theta)}{1-\beta}\,\mathrm dt
    + \frac{\sqrt{hc}}{1-\beta}\,\Sigma^{1/2}(\Theta)\,\mathrm dW,$$

    the SGD SME (`StochasticModifiedEquation`, order 1) at step $h/(1-\beta)$ seen
    in time $t(1-\beta)$ (Li, Tai & E: the SMEs of MSGD and SNAG coincide at this
    order). The buffer's start ($m_0 = 0$) and its lag behind the slaved value
    $g/(1-\beta)$ move $\theta$ by $O(h)$: weak order 1, not 2. The noise is
    matrix-free as for SGD: one backward pass through a weighted loss.

    **Arguments:** `loss`, `data`, `h`, `beta`, `order` (1), `batch_size`,
    `replacement`, `examples` (as `StochasticModifiedEquation`).

    ??? cite "Reference"
        ```bibtex
        @article{li2019stochastic,
          title={Stochastic Modified Equations and Dynamics of Stochastic Gradient
                 Algorithms {I}: Mathematical Foundations},
          author={Li, Qianxiao and Tai, Cheng and E, Weinan},
          journal={Journal of Machine Learning Research},
          volume={20}, number={40}, pages={1--47}, year={2019}
        }
        ```
    """

    loss: Loss
    data: Args
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    beta: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: int = eqx.field(static=True, default=1)
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    orders = (1,)

    @classmethod
    def of(cls, step: RandomBatch, data: Args, h: RealScalarLike, order: int = 1):
        """The SME of `RandomBatch(HeavyBall(...))` or `RandomBatch(Nesterov(...))` on `data`."""
        inner = _wrapped(step, (HeavyBall, Nesterov), cls)
        return cls(
            inner.loss, data, h, inner.beta, order, step.batch_size, step.replacement, step.examples
        )

    def _rate(self):
        return 1.0 / (1.0 - self.beta)

    def __call__(self, t: RealScalarLike, y: Y, args: Args = None) -> Y:
        r"""The drift $-\nabla L/(1-\beta)$."""
        del t, args
        return jtu.tree_map(lambda g: -self._rate() * g, grad(self._mean_loss, y, None))

    def unit_increments(self, y: Y) -> Y:
        r"""$-g_k/(1-\beta)$ for every unit."""
        return jtu.tree_map(lambda g: -self._rate() * g, self.unit_gradients(y))

    def noise(self, t: RealScalarLike, y: Y, args: Args, dw: Float[Array, " N"]) -> Y:
        r"""$\sqrt h\,\sigma\,\mathrm dW$ by one gradient of a weighted loss (no $g_k$ formed)."""
        del t, args
        weights = jnp.mean(dw) - dw
        weighted = lambda p, _: jnp.dot(
            weights, unit_losses(self.loss, p, self.data, self.examples)
        )
        scale = self._rate() * self._noise_scale()
        return jtu.tree_map(lambda g: scale * g, grad(weighted, y, None))

    def observe(self, state) -> Y:
        """The parameters of a `MomentumState` (the buffer is fast, see above)."""
        return state.params

    def check_map(self, step_map) -> None:
        inner = _wrapped(step_map, (HeavyBall, Nesterov), self)
        _check_same("beta", inner.beta, self.beta, self, "build both with the same `beta`.")


def _inverse_preconditioner(eps, eps_inside_sqrt: bool):
    return lambda nu: 1.0 / _preconditioned(nu, eps, eps_inside_sqrt)


class RMSPropSME(AbstractStochasticModifiedEquation):
    r"""SDEs of minibatch RMSProp on $(\theta, v)$: weak order 1 and order 2.

    **Scaling.** $1 - \rho = c_v h$ with the decay rate $c_v$ (`decay_rate`) fixed
    as $h \to 0$, and the minibatch noise fixed (Malladi et al. 2022 scale
    $1 - \rho$ with the step in the same way; Callisti, Romito & Triggiano 2025
    call this the ballistic regime). Then RMSProp
    $v' = v + c_vh(\bar g_B^2 - v)$, $\theta' = \theta - h\,\bar g_B\,p(v')$ with
    $p(v) = 1/\sqrt{v+\epsilon}$ (or $1/(\sqrt v + \epsilon)$) is
    $y' = y + hF_h(y, B)$ on the whole state $y = (\theta, v)$ with

    $$F_0 = \bigl(-\bar g_B\,p(v),\ c_v(\bar g_B^2 - v)\bigr),\qquad
    F_1 = \bigl(-c_v\,p'(v)\,\bar g_B(\bar g_B^2 - v),\ 0\bigr)$$

    (elementwise). With $\mathbb E\bar g_B = g$ and
    $\mathbb E\bar g_B^2 = g^2 + c\operatorname{diag}\Sigma$:

    - order 1: $\mathrm d\Theta = -p(V)\,g\,\mathrm dt + \sqrt h\,\sigma_\theta\,\mathrm dW$,
      $\mathrm dV = c_v(g^2 + c\operatorname{diag}\Sigma - V)\,\mathrm dt
      + \sqrt h\,\sigma_v\,\mathrm dW$,
      where the $\operatorname{diag}\Sigma$ in $v$'s drift is the term Malladi et al.'s
      SDE keeps;
    - order 2 (one unit per step, `batch_size=1`, where
      $\mathbb E F_1 = -c_v p'(v)\,\frac1N\sum_k g_k(g_k^2 - v)$ is exact): drift
      $b_0 + h(\mathbb E F_1 - \frac12 b_0'b_0)$ ($b_0$ the order-1 drift, $b_0'b_0$
      one Jacobian-vector product), same noise.

    The noise columns are the centred per-unit increments
    $\sqrt{c/N}\,(-p(v)g_k,\ c_v g_k^2)$: its covariance is exactly that of $F_0$ for
    one unit per step, on $\theta$, on $v$ and across them. Callisti et al. write it
    with independent Brownian motions on $\theta$ and $v$ (their theorem's noise);
    here one $N$-dimensional Brownian motion drives both through the units, which
    carries the $\theta$–$v$ cross-covariance $-c_v\,p(v)\operatorname{Cov}(g_k, g_k^2)$
    as well. With `batch_size` $b > 1$ the $v$-part of the noise is the units'
    covariance times $c$, right to leading order in $1/b$ (it enters the weak error
    at $O(h)$ only, so order 1 holds either way).

    **Arguments:** `loss`, `data`, `h`, `decay_rate` ($c_v$), `eps`,
    `eps_inside_sqrt`, `order` (1 or 2), `batch_size`, `replacement`, `examples`;
    `RMSPropSME.of(step, data, h, order)` reads them off `RandomBatch(RMSProp(...))`.
    `check_map` refuses a map whose $\rho$ is not $1 - c_v h$.

    ??? cite "References"
        ```bibtex
        @inproceedings{malladi2022sdes,
          title={On the {SDE}s and Scaling Rules for Adaptive Gradient Algorithms},
          author={Malladi, Sadhika and Lyu, Kaifeng and Panigrahi, Abhishek and Arora, Sanjeev},
          booktitle={Advances in Neural Information Processing Systems},
          year={2022}
        }
        @article{callisti2025effective,
          title={Effective continuous equations for adaptive {SGD}: a stochastic analysis view},
          author={Callisti, Luca and Romito, Marco and Triggiano, Francesco},
          journal={arXiv:2509.21614},
          year={2025}
        }
        ```
    """

    loss: Loss
    data: Args
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    decay_rate: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=True)
    order: int = eqx.field(static=True, default=1)
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    orders = (1, 2)

    def __check_init__(self):
        if self.order == 2 and self.batch_size != 1:
            raise InputError(
                "`order=2` needs one unit per step (`batch_size=1`): its drift uses the third "
                f"moments of the units' gradients; got batch_size={self.batch_size}."
            )

    @classmethod
    def of(cls, step: RandomBatch, data: Args, h: RealScalarLike, order: int = 1):
        """The SDE of `RandomBatch(RMSProp(loss, rho, eps))` at `h`: $c_v = (1-\\rho)/h$."""
        inner = _wrapped(step, (RMSProp,), cls)
        return cls(
            inner.loss,
            data,
            h,
            (1 - inner.rho) / h,
            inner.eps,
            inner.eps_inside_sqrt,
            order,
            step.batch_size,
            step.replacement,
            step.examples,
        )

    def _p(self):
        return _inverse_preconditioner(self.eps, self.eps_inside_sqrt)

    def _first_order_drift(self, y: RMSPropState) -> RMSPropState:
        mean, square, _ = self._gradient_moments(y.params)
        p = self._p()
        theta = jtu.tree_map(lambda g, v: -p(v) * g, mean, y.nu)
        nu = jtu.tree_map(lambda s, v: self.decay_rate * (s - v), square, y.nu)
        return RMSPropState(theta, nu)

    def __call__(self, t: RealScalarLike, y: RMSPropState, args: Args = None) -> RMSPropState:
        r"""The drift: $b_0$ (order 1) or $b_0 + h(\mathbb E F_1 - \frac12 b_0'b_0)$ (order 2)."""
        del t, args
        if self.order == 1:
            return self._first_order_drift(y)
        drift, transported = jax.jvp(self._first_order_drift, (y,), (self._first_order_drift(y),))
        grads = self.unit_gradients(y.params)
        third = jtu.tree_map(
            lambda g, v: jnp.mean(g * (g**2 - v), axis=0), grads, y.nu
        )  # E[g_B (g_B^2 - v)] over one unit
        slope = jtu.tree_map(lambda v, w: jax.jvp(self._p(), (v,), (w,))[1], y.nu, third)
        correction = RMSPropState(
            jtu.tree_map(lambda s: -self.decay_rate * s, slope),
            jtu.tree_map(jnp.zeros_like, y.nu),
        )
        return jtu.tree_map(
            lambda b, f1, bb: b + self.h * (f1 - 0.5 * bb), drift, correction, transported
        )

    def unit_increments(self, y: RMSPropState) -> RMSPropState:
        r"""$F_0(y, k) = (-p(v)\,g_k,\ c_v(g_k^2 - v))$ for every unit."""
        grads = self.unit_gradients(y.params)
        p = self._p()
        return RMSPropState(
            jtu.tree_map(lambda g, v: -p(v) * g, grads, y.nu),
            jtu.tree_map(lambda g, v: self.decay_rate * (g**2 - v), grads, y.nu),
        )

    def check_map(self, step_map) -> None:
        inner = _wrapped(step_map, (RMSProp,), self)
        fix = "build the map as RMSProp(loss, rho=1 - decay_rate * h) at every h."
        _check_same("rho", inner.rho, 1 - self.decay_rate * self.h, self, fix)
        _check_same("eps", inner.eps, self.eps, self, "build both with the same `eps`.")
        if inner.eps_inside_sqrt != self.eps_inside_sqrt:
            raise InputError("`step` and `sde` place `eps` differently (`eps_inside_sqrt`).")


class AdamSME(AbstractStochasticModifiedEquation):
    r"""The weak order-1 SDE of minibatch Adam on $(\theta, m, v)$, without bias correction.

    **Scaling.** $1 - \beta_1 = c_1h$, $1 - \beta_2 = c_2h$ with $c_1, c_2$
    (`decay_rates`) fixed as $h\to0$ and the minibatch noise fixed (Malladi et
    al. 2022 scale $1 - \beta_i$ with the step likewise). Adam
    $m' = m + c_1h(\bar g_B - m)$, $v' = v + c_2h(\bar g_B^2 - v)$,
    $\theta' = \theta - h\,m'p(v')$ (driftlab's `Adam` with
    `bias_correction=False`: the SDE describes the iterates after the correction's
    boundary layer) is $y' = y + hF_h$ with
    $F_0 = (-m\,p(v),\ c_1(\bar g_B - m),\ c_2(\bar g_B^2 - v))$, so

    $$\mathrm d\Theta = -p(V)M\,\mathrm dt,\quad
    \mathrm dM = c_1(g - M)\,\mathrm dt + \sqrt h\,\sigma_m\,\mathrm dW,\quad
    \mathrm dV = c_2(g^2 + c\operatorname{diag}\Sigma - V)\,\mathrm dt
    + \sqrt h\,\sigma_v\,\mathrm dW,$$

    noise columns $\sqrt{c/N}\,(0,\ c_1g_k,\ c_2g_k^2)$ centred (the parameters
    themselves carry no noise at this order: it reaches them through $m$, as in
    Malladi et al.'s Adam SDE). `check_map` refuses a map whose $\beta_i$ are not
    $1 - c_ih$, or that corrects the bias.

    **Arguments:** `loss`, `data`, `h`, `decay_rates` ($(c_1, c_2)$), `eps`,
    `eps_inside_sqrt`, `order` (1), `batch_size`, `replacement`, `examples`;
    `AdamSME.of(step, data, h)` reads them off `RandomBatch(Adam(...))`.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{malladi2022sdes,
          title={On the {SDE}s and Scaling Rules for Adaptive Gradient Algorithms},
          author={Malladi, Sadhika and Lyu, Kaifeng and Panigrahi, Abhishek and Arora, Sanjeev},
          booktitle={Advances in Neural Information Processing Systems},
          year={2022}
        }
        ```
    """

    loss: Loss
    data: Args
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    decay_rates: Float[Array, " 2"] = eqx.field(converter=jnp.asarray)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=False)
    order: int = eqx.field(static=True, default=1)
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    orders = (1,)

    @classmethod
    def of(cls, step: RandomBatch, data: Args, h: RealScalarLike, order: int = 1):
        """The SDE of `RandomBatch(Adam(...))` at `h`: $c_i = (1-\\beta_i)/h$."""
        inner = _wrapped(step, (Adam,), cls)
        rates = jnp.stack([1 - inner.b1, 1 - inner.b2]) / h
        return cls(
            inner.loss,
            data,
            h,
            rates,
            inner.eps,
            inner.eps_inside_sqrt,
            order,
            step.batch_size,
            step.replacement,
            step.examples,
        )

    def __call__(self, t: RealScalarLike, y: AdamState, args: Args = None) -> AdamState:
        r"""The drift $(-p(v)m,\ c_1(g - m),\ c_2(g^2 + c\operatorname{diag}\Sigma - v))$."""
        del t, args
        mean, square, _ = self._gradient_moments(y.params)
        p = _inverse_preconditioner(self.eps, self.eps_inside_sqrt)
        c1, c2 = self.decay_rates[0], self.decay_rates[1]
        return AdamState(
            jtu.tree_map(lambda m, v: -p(v) * m, y.mu, y.nu),
            jtu.tree_map(lambda g, m: c1 * (g - m), mean, y.mu),
            jtu.tree_map(lambda s, v: c2 * (s - v), square, y.nu),
            None,
        )

    def unit_increments(self, y: AdamState) -> AdamState:
        r"""$F_0(y, k) = (-p(v)m,\ c_1(g_k - m),\ c_2(g_k^2 - v))$ for every unit."""
        grads = self.unit_gradients(y.params)
        p = _inverse_preconditioner(self.eps, self.eps_inside_sqrt)
        c1, c2 = self.decay_rates[0], self.decay_rates[1]
        num = self.num_noise
        return AdamState(
            jtu.tree_map(lambda m, v: jnp.broadcast_to(-p(v) * m, (num, *m.shape)), y.mu, y.nu),
            jtu.tree_map(lambda g, m: c1 * (g - m), grads, y.mu),
            jtu.tree_map(lambda g, v: c2 * (g**2 - v), grads, y.nu),
            None,
        )

    def check_map(self, step_map) -> None:
        inner = _wrapped(step_map, (Adam,), self)
        if inner.bias_correction:
            raise InputError(
                "AdamSME describes Adam without bias correction (its iterates after the "
                "correction's boundary layer); build the map with `bias_correction=False`."
            )
        fix = "build the map as Adam(loss, b1=1 - c1 * h, b2=1 - c2 * h) at every h."
        for i, name in enumerate(("b1", "b2")):
            wanted = 1 - self.decay_rates[i] * self.h
            _check_same(name, getattr(inner, name), wanted, self, fix)
        _check_same("eps", inner.eps, self.eps, self, "build both with the same `eps`.")
        if inner.eps_inside_sqrt != self.eps_inside_sqrt:
            raise InputError("`step` and `sde` place `eps` differently (`eps_inside_sqrt`).")


@eqx.filter_jit
def _euler_solve(sde, y0, t_end, dt, key, saveat, max_steps):
    return sde_euler_solve(sde, y0, t_end, dt, key, dt / 2, saveat, max_steps)


def _sde_terms(sde, path) -> diffrax.MultiTerm:
    return diffrax.MultiTerm(diffrax.ODETerm(sde), _NoiseTerm(sde, path))


def sde_euler_solve(sde, y0, t_end, dt, key, tol, saveat, max_steps):
    """`diffeqsolve` with Euler–Maruyama at constant step `dt` on the Brownian tree of `key`.

    A model's static leaves are held out of the solve and put back in the result.
    """
    arrays, static = split(y0)
    on_arrays = _SDEOnArrays(sde, static) if jtu.tree_leaves(static) else sde
    solution = diffrax.diffeqsolve(
        _sde_terms(on_arrays, sde.brownian_motion(key, t_end, tol)),
        diffrax.Euler(),
        0.0,
        t_end,
        dt,
        arrays,
        saveat=saveat,
        stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.ForwardMode(),
        max_steps=max_steps,
    )
    return eqx.combine(solution.ys, static)


class _SDEOnArrays(_OnArrays):
    """An SDE on a model seen as one on its array leaves; the static leaves are fixed."""

    def diffusion(self, t, y, args):
        return split(self.flow.diffusion(t, eqx.combine(y, self.static), args))[0]

    def noise(self, t, y, args, dw):
        return split(self.flow.noise(t, eqx.combine(y, self.static), args, dw))[0]


class _NoiseTerm(diffrax.AbstractTerm):
    """$G(\\theta)\\,\\mathrm dW$ with a PyTree state and one $N$-dimensional Brownian motion."""

    sde: StochasticModifiedEquation
    path: diffrax.AbstractBrownianPath

    def vf(self, t, y, args):
        return self.sde.diffusion(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: v @ control, vf)

    def vf_prod(self, t, y, args, control):
        return self.sde.noise(t, y, args, control)

    def is_vf_expensive(self, t0, t1, y, args) -> bool:
        del t0, t1, y, args
        return True
