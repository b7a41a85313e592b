"""Stochastic modified equations of SGD (Li, Tai & E) as diffrax drift and diffusion terms."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_float64_tree, check_step_size, InputError
from .._tree import grad, gradient_function, split, tree_vdot
from ..integrators._random import (
    check_loss,
    check_sampling,
    covariance_factor,
    num_units,
    RandomBatchSGD,
    unit_losses,
)
from ..integrators._solve import _OnArrays
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]


class StochasticModifiedEquation(AbstractFlow):
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
    $G(\theta) = \sqrt{hc/N}\,[g_1 - g, \dots, g_N - g]$ driven by an
    $N$-dimensional Brownian motion: $GG^\top = hc\,\Sigma$ exactly, $\Sigma$ is never
    formed and $G$ is as smooth as the loss (unlike $\Sigma^{1/2}$). The noise term's
    `vf_prod` never forms $G$ either:
    $G\,\mathrm dW = \sqrt{hc/N}\,\nabla_\theta\sum_k (\mathrm dW_k - \overline{\mathrm dW})
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

    def __check_init__(self):
        check_loss(self.loss)
        if self.order not in (1, 2):
            raise InputError(f"`order` must be 1 or 2 (weak order), got {self.order!r}.")
        if not isinstance(self.h, jax.core.Tracer):
            check_step_size(self.h)
        check_sampling(self.num_noise, self.batch_size, self.replacement)

    @classmethod
    def of(cls, step: RandomBatchSGD, data: Args, h: RealScalarLike, order: int = 1):
        """The SME of the random-batch SGD map `step` on `data`, with its sampling model."""
        if not isinstance(step, RandomBatchSGD):
            raise InputError(
                f"`step` must be a driftlab.integrators.RandomBatchSGD, got {type(step).__name__}."
            )
        return cls(step.loss, data, h, order, step.batch_size, step.replacement, step.examples)

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
        r"""$L = \frac1N\sum_k L_k$, the mean of the units' losses."""
        return jnp.mean(unit_losses(self.loss, y, self.data, self.examples))

    def _mean_loss(self, y: Y, args: Args) -> Scalar:
        del args
        return self.mean_loss(y)

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

    def diffusion(self, t: RealScalarLike, y: Y, args: Args = None) -> Y:
        r"""$G(\theta)$ as a PyTree: each leaf of `y` with a trailing axis of length $N$.

        Forms all $N$ unit gradients; solvers use `noise` instead.
        """
        del t, args
        arrays, static = split(y)
        grads = jax.jacrev(
            lambda a: unit_losses(self.loss, eqx.combine(a, static), self.data, self.examples)
        )(arrays)
        scale = self._noise_scale()
        return jtu.tree_map(
            lambda g: scale * jnp.moveaxis(g - jnp.mean(g, axis=0, keepdims=True), 0, -1), grads
        )

    def noise(self, t: RealScalarLike, y: Y, args: Args, dw: Float[Array, " N"]) -> Y:
        r"""$G(\theta)\,\mathrm dW$ without forming $G$: one gradient of a weighted loss."""
        del t, args
        weights = dw - jnp.mean(dw)
        weighted = lambda p, _: jnp.dot(
            weights, unit_losses(self.loss, p, self.data, self.examples)
        )
        return jtu.tree_map(lambda g: self._noise_scale() * g, grad(weighted, y, None))

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
