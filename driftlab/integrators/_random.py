"""SGD with a random minibatch per step: the sampling models of the SMEs."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, UInt

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import grad, tree_axpy
from ._maps import _AbstractParamsInStateMap, num_batches


Loss = Callable[[Y, Args], Scalar]


def num_units(data: Args) -> int:
    """The number of sampling units (batches or examples): the leading axis of `data`."""
    try:
        return num_batches(data)
    except ValueError as error:
        raise InputError(str(error)) from None


def unit_losses(loss: Loss, params: Y, data: Args, examples: bool) -> Array:
    """The loss of every sampling unit: each batch of a stack, or each example as a batch of one."""
    if examples:
        return jax.vmap(lambda unit: loss(params, jtu.tree_map(lambda x: x[None], unit)))(data)
    return jax.vmap(lambda unit: loss(params, unit))(data)


def covariance_factor(num: int, batch_size: int, replacement: bool) -> float:
    r"""$c$ with $\operatorname{Cov}(\bar g_B) = c\,\Sigma$ for the mean of `batch_size` units.

    $\Sigma = \frac1N\sum_k(g_k - g)(g_k - g)^\top$ over the $N$ units: $c = 1/b$ with
    replacement, $c = \frac{N - b}{b(N - 1)}$ (the finite-population factor) without.
    """
    if replacement:
        return 1.0 / batch_size
    return (num - batch_size) / (batch_size * (num - 1)) if num > 1 else 0.0


def check_loss(loss) -> None:
    if not callable(loss):
        raise InputError("`loss` must be callable as `loss(params, batch)`.")


def check_sampling(num: int, batch_size: int, replacement: bool) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if not replacement and batch_size > num:
        raise InputError(
            f"`batch_size` {batch_size} exceeds the {num} units of `data`; without "
            "replacement a minibatch holds distinct units (or pass `replacement=True`)."
        )


class RandomBatchState(eqx.Module):
    """State of `RandomBatchSGD`: the parameters and the raw (uint32) PRNG key of the next step."""

    params: Y
    key: UInt[Array, " 2"]


class RandomBatchSGD(_AbstractParamsInStateMap):
    r"""SGD with a random minibatch per step: $\theta_{n+1} = \theta_n - h\,\bar g_{B_n}(\theta_n)$.

    `args` holds $N$ sampling units along its leading axis, and each step draws
    `batch_size` $= b$ of them with a fresh PRNG key (carried in the state, split
    every step), uniformly, with or without replacement. Two sampling models:

    - `examples=False`: the units are $N = m$ fixed batches (a stack, as
      `driftlab.SGDEpoch` takes); the step's gradient is the mean of the drawn
      batches' gradients ($b = 1$: one batch per step, the setting of Li, Tai & E).
    - `examples=True`: the units are the $N$ examples of a data set; the step
      evaluates `loss` on the minibatch of the $b$ drawn examples (so `loss` must
      be a mean over its batch, as the problems' losses are).

    Either way $\mathbb E\,\bar g_B = g = \frac1N\sum_k g_k$ and
    $\operatorname{Cov}\bar g_B = c\,\Sigma$ with
    $\Sigma = \frac1N\sum_k (g_k - g)(g_k - g)^\top$, $c = 1/b$ with replacement
    and $c = \frac{N-b}{b(N-1)}$ without: the covariance the matching
    `driftlab.StochasticModifiedEquation` carries.

    Start with `state = step.init(params, key=key)`; `iterate` and `advance` then
    run it like any map.

    **Arguments:** `loss` (called as `loss(params, batch)`), `batch_size`,
    `replacement`, `examples` (all keyword-or-positional after `loss`).
    """

    loss: Loss
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_loss(self.loss)
        check_sampling(self.batch_size, self.batch_size, True)

    def draw(self, key, num: int) -> Array:
        """The indices of one minibatch of `batch_size` of the `num` units."""
        if self.replacement:
            return jr.randint(key, (self.batch_size,), 0, num)
        return jr.permutation(key, num)[: self.batch_size]

    def gradient(self, params: Y, data: Args, indices: Array) -> Y:
        """$\\bar g_B$, the minibatch gradient over the units `indices` of `data`."""
        chosen = jtu.tree_map(lambda x: x[indices], data)
        if self.examples:
            return grad(self.loss, params, chosen)
        grads = jax.vmap(grad, in_axes=(None, None, 0))(self.loss, params, chosen)
        return jtu.tree_map(lambda g: jnp.mean(g, axis=0), grads)

    def __call__(self, y: RandomBatchState, h: RealScalarLike, args: Args) -> RandomBatchState:
        num = num_units(args)
        check_sampling(num, self.batch_size, self.replacement)
        key, subkey = jr.split(jr.wrap_key_data(y.key))
        params = tree_axpy(-h, self.gradient(y.params, args, self.draw(subkey, num)), y.params)
        return RandomBatchState(params, jr.key_data(key))

    def init(self, params: Y, args: Args = None, *, key=None) -> RandomBatchState:
        """The state `(params, key)`; `key` (a `jax.random.key`) seeds the batch draws."""
        del args
        if key is None:
            raise InputError("`RandomBatchSGD.init` needs `key=jax.random.key(seed)`.")
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jr.wrap_key_data(key)
        return RandomBatchState(params, jr.key_data(key))
