"""Modified flows of an SGD epoch: in expectation over batch orders, and for the exact order."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._tree import gradient_function
from ._base import AbstractFlow
from ._losses import batch_gradients, checked_batches, epoch_loss, sgd_regulariser


Loss = Callable[[Y, Args], Scalar]


def _batch_hvps(loss: Loss, params: Y, batches: Args, directions: Y) -> Y:
    """$H_k v_k$ for every batch `k`, with `directions` stacked like the batches."""

    def hvp(batch, direction):
        arrays, grad_fn = gradient_function(loss, params, batch)
        return jax.jvp(grad_fn, (arrays,), (direction,))[1]

    return jax.vmap(hvp)(batches, directions)


def _mean0(tree: Y) -> Y:
    return jtu.tree_map(lambda leaf: jnp.mean(leaf, axis=0), tree)


class SGDFlow(AbstractFlow):
    r"""The modified flow of an SGD epoch in expectation over batch orders (order 1).

    With $m$ batches of losses $L_k$, $L = \frac1m\sum_k L_k$ and $g_k = \nabla L_k$,

    $$\dot\theta = -\nabla\tilde L, \qquad
    \tilde L = L + \frac{h}{4m}\sum_{k=1}^m\|g_k\|^2
    = L + \frac h4\|\nabla L\|^2 + \frac{h}{4m}\sum_{k}\|g_k - \nabla L\|^2,$$

    i.e. $\dot\theta = -\nabla L - \frac{h}{2m}\sum_k H_k g_k$ ($m$ gradients and
    $m$ Hessian-vector products). Time is that of `driftlab.SGDEpoch`: one epoch
    of $m$ steps of size `h` takes time $m h$. `args` is the stack of batches
    (leading axis $m$). The exact epoch map, for a fixed order, has an extra
    antisymmetric term (`ExactBatchSGDFlow`); its mean over all $m!$ orders is zero,
    so this flow matches the *order-averaged* epoch to $O(h^3)$ per epoch.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{smith2021origin,
          title={On the Origin of Implicit Regularization in Stochastic Gradient Descent},
          author={Smith, Samuel L. and Dherin, Benoit and Barrett, David G. T. and De, Soham},
          booktitle={International Conference on Learning Representations},
          year={2021}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: ClassVar[int] = 1

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        m = checked_batches(args)
        grads = batch_gradients(self.loss, y, args)
        hvps = _batch_hvps(self.loss, y, args, grads)
        return jtu.tree_map(
            lambda g, hg: -jnp.mean(g, axis=0) - 0.5 * self.h * jnp.sum(hg, axis=0) / m,
            grads,
            hvps,
        )

    def modified_loss(self, y: Y, args: Args) -> Scalar:
        return epoch_loss(self.loss, y, args) + self.h * sgd_regulariser(self.loss, y, args)


class ExactBatchSGDFlow(AbstractFlow):
    r"""The modified flow of one SGD epoch with the batches in the given order (order 1).

    For the epoch $\theta\mapsto\phi_m\circ\cdots\circ\phi_1(\theta)$,
    $\phi_k(\theta) = \theta - h g_k(\theta)$, taking time $m h$:

    $$\dot\theta = -\frac1m\sum_k g_k - \frac{h}{2m}\sum_k H_k g_k
    + \frac{h}{2m}\sum_{i<j}\left(H_j g_i - H_i g_j\right).$$

    Derivation: the epoch moves $\theta$ by
    $-h\sum_k g_k + h^2\sum_{i<j} H_j g_i + O(h^3)$; the flow over time $mh$
    moves it by $mhf_0 + mh^2 f_1 + \frac{m^2h^2}2 f_0'f_0 + O(h^3)$, and
    $m^2 f_0' f_0 = \sum_{i,j}H_j g_i$. The last sum is computed with one
    Hessian-vector product per batch as $\sum_j H_j(G_{<j} - G_{>j})$ with prefix
    and suffix sums of the gradients. Its first two terms are
    $-\nabla\tilde L$ with $\tilde L$ the loss of `SGDFlow` (`gradient_part_loss`);
    the antisymmetric sum is **not a gradient field in general** (it vanishes for
    $m = 1$ and, averaged over orders, for any $m$), so `modified_loss` raises.

    ??? cite "Reference"
        ```bibtex
        @article{rosca2023implicit,
          title={Implicit regularisation in stochastic gradient descent: from
                 single-objective to two-player games},
          author={Rosca, Mihaela and Deisenroth, Marc Peter},
          journal={arXiv preprint arXiv:2307.05789},
          year={2023}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    order: ClassVar[int] = 1

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        m = checked_batches(args)
        grads = batch_gradients(self.loss, y, args)
        # Direction for batch j: G_{<j} - G_{>j} - g_j = 2 C_j - 2 g_j - G, C inclusive cumsum.
        directions = jtu.tree_map(
            lambda g: 2 * jnp.cumsum(g, axis=0) - 2 * g - jnp.sum(g, axis=0, keepdims=True),
            grads,
        )
        hvps = _batch_hvps(self.loss, y, args, directions)
        return jtu.tree_map(
            lambda g, hv: -jnp.mean(g, axis=0) + 0.5 * self.h * jnp.sum(hv, axis=0) / m,
            grads,
            hvps,
        )

    def antisymmetric_part(self, y: Y, args: Args) -> Y:
        r"""$\frac{1}{2m}\sum_{i<j}(H_j g_i - H_i g_j)$: the non-gradient part of $f_1$."""
        m = checked_batches(args)
        grads = batch_gradients(self.loss, y, args)
        directions = jtu.tree_map(
            lambda g: 2 * jnp.cumsum(g, axis=0) - g - jnp.sum(g, axis=0, keepdims=True), grads
        )
        hvps = _batch_hvps(self.loss, y, args, directions)
        return jtu.tree_map(lambda hv: 0.5 * jnp.sum(hv, axis=0) / m, hvps)

    def gradient_part_loss(self, y: Y, args: Args) -> Scalar:
        r"""$L + \frac{h}{4m}\sum_k\|g_k\|^2$: the modified loss of the field without its
        antisymmetric part (the `SGDFlow` loss)."""
        return epoch_loss(self.loss, y, args) + self.h * sgd_regulariser(self.loss, y, args)
