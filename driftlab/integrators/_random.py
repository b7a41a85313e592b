"""Optimisers with a random minibatch per step: the sampling models of the SMEs."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from equinox import AbstractVar
from jaxtyping import Array, UInt

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import grad, tree_axpy
from ._maps import _AbstractParamsInStateMap, AbstractStepMap, num_batches


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


def _raw_key(key, owner: str) -> UInt[Array, " 2"]:
    if key is None:
        raise InputError(f"`{owner}.init` needs `key=jax.random.key(seed)`.")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jr.wrap_key_data(key)
    return jr.key_data(key)


class AbstractRandomBatchMap(AbstractStepMap):
    r"""A map that draws a random minibatch of the units of `args` at every step.

    The state holds a raw PRNG key, split at every step; the subkey draws
    `batch_size` of the $N$ units of `args` (leading axis), uniformly, with or
    without `replacement`, and `examples` says whether a unit is an example or a
    whole batch (see `RandomBatchSGD`). Subclasses say how to put a key beside the
    underlying optimiser's state (`keyed`) and take it off (`unkeyed`), and what a
    step does with the drawn units (`__call__`, using `next_minibatch`).
    """

    batch_size: AbstractVar[int]
    replacement: AbstractVar[bool]
    examples: AbstractVar[bool]

    def draw(self, key, num: int) -> Array:
        """The indices of one minibatch of `batch_size` of the `num` units."""
        if self.replacement:
            return jr.randint(key, (self.batch_size,), 0, num)
        return jr.permutation(key, num)[: self.batch_size]

    def next_minibatch(self, raw_key: UInt[Array, " 2"], data: Args):
        """The next raw key and the indices of this step's units of `data`."""
        num = num_units(data)
        check_sampling(num, self.batch_size, self.replacement)
        key, subkey = jr.split(jr.wrap_key_data(raw_key))
        return jr.key_data(key), self.draw(subkey, num)

    @abc.abstractmethod
    def keyed(self, state: Y, key) -> Y:
        """The random-batch state: the optimiser's `state` and the `jax.random.key` `key`."""

    @abc.abstractmethod
    def unkeyed(self, y: Y) -> Y:
        """The optimiser's state held in the random-batch state `y` (its key dropped)."""


class RandomBatchState(eqx.Module):
    """State of `RandomBatchSGD`: the parameters and the raw (uint32) PRNG key of the next step."""

    params: Y
    key: UInt[Array, " 2"]


class RandomBatchSGD(AbstractRandomBatchMap, _AbstractParamsInStateMap):
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
    `driftlab.StochasticModifiedEquation` carries. `RandomBatch` draws the same
    minibatches for any other optimiser.

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

    def gradient(self, params: Y, data: Args, indices: Array) -> Y:
        """$\\bar g_B$, the minibatch gradient over the units `indices` of `data`."""
        return grad(minibatch_loss(self.loss, self.examples), params, _take(data, indices))

    def __call__(self, y: RandomBatchState, h: RealScalarLike, args: Args) -> RandomBatchState:
        key, indices = self.next_minibatch(y.key, args)
        params = tree_axpy(-h, self.gradient(y.params, args, indices), y.params)
        return RandomBatchState(params, key)

    def init(self, params: Y, args: Args = None, *, key=None) -> RandomBatchState:
        """The state `(params, key)`; `key` (a `jax.random.key`) seeds the batch draws."""
        del args
        return self.keyed(params, key)

    def keyed(self, state: Y, key) -> RandomBatchState:
        return RandomBatchState(state, _raw_key(key, "RandomBatchSGD"))

    def unkeyed(self, y: RandomBatchState) -> Y:
        return y.params


def _take(data: Args, indices: Array) -> Args:
    return jtu.tree_map(lambda x: x[indices], data)


class _MeanOverUnits(eqx.Module):
    """`loss` averaged over a stack of batches: the loss of a minibatch of batches."""

    loss: Loss

    def __call__(self, params: Y, batches: Args) -> Scalar:
        return jnp.mean(jax.vmap(self.loss, in_axes=(None, 0))(params, batches))


def minibatch_loss(loss: Loss, examples: bool) -> Loss:
    """The loss of the drawn units: `loss` itself on drawn examples, else its mean over batches."""
    return loss if examples else _MeanOverUnits(loss)


class RandomBatchMapState(eqx.Module):
    """State of `RandomBatch`: the wrapped map's state and the raw PRNG key of the next step."""

    state: Y
    key: UInt[Array, " 2"]


class RandomBatch(AbstractRandomBatchMap):
    r"""Any optimiser with a random minibatch per step, drawn as `RandomBatchSGD` draws it.

    `RandomBatch(HeavyBall(loss, 0.9), batch_size=4, examples=True)` is minibatch
    heavy-ball: each step draws `batch_size` of the $N$ units of `args` (same
    sampling models, same key handling as `RandomBatchSGD`) and applies the
    deterministic map `step_map` to them, so its buffers (momentum, $v$, Adam's
    moments, an optax state) see the minibatch gradient $\bar g_{B_n}$. With
    `examples=False` and `batch_size` $> 1$ the drawn batches enter through the mean
    of their losses (the map's `loss` field is averaged over the stack).

    The state is a `RandomBatchMapState(state, key)`; start with
    `step.init(params, key=key)` (the map's own `init`), or `step.keyed(state, key)`
    from a state of the map.

    **Arguments:** `step_map` (any `AbstractStepMap` whose loss is a field `loss`,
    e.g. `HeavyBall`, `Nesterov`, `RMSProp`, `Adam`, `OptaxStepMap`), `batch_size`,
    `replacement`, `examples`.
    """

    step_map: AbstractStepMap
    batch_size: int = eqx.field(static=True, default=1)
    replacement: bool = eqx.field(static=True, default=True)
    examples: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.step_map, AbstractStepMap) or isinstance(
            self.step_map, AbstractRandomBatchMap
        ):
            raise InputError(
                "`step_map` must be a deterministic driftlab step map (e.g. "
                f"`driftlab.HeavyBall(loss, beta)`), got {type(self.step_map).__name__}."
            )
        check_sampling(self.batch_size, self.batch_size, True)
        try:
            check_loss(self.step_map.loss)
        except AttributeError:
            raise InputError(
                f"`step_map` ({type(self.step_map).__name__}) has no `loss` field to draw "
                "minibatches for."
            ) from None

    def _on_units(self) -> AbstractStepMap:
        loss = minibatch_loss(self.step_map.loss, self.examples)
        return eqx.tree_at(lambda m: m.loss, self.step_map, loss)

    def __call__(
        self, y: RandomBatchMapState, h: RealScalarLike, args: Args
    ) -> RandomBatchMapState:
        key, indices = self.next_minibatch(y.key, args)
        return RandomBatchMapState(self._on_units()(y.state, h, _take(args, indices)), key)

    def init(self, params: Y, args: Args = None, *, key=None) -> RandomBatchMapState:
        """The map's initial state for `params` and the key (a `jax.random.key`) of the draws."""
        return self.keyed(self.step_map.init(params, args), key)

    def keyed(self, state: Y, key) -> RandomBatchMapState:
        return RandomBatchMapState(state, _raw_key(key, "RandomBatch"))

    def unkeyed(self, y: RandomBatchMapState) -> Y:
        return y.state

    def parameters(self, y: RandomBatchMapState) -> Y:
        return self.step_map.parameters(y.state)

    def with_parameters(self, y: RandomBatchMapState, params: Y) -> RandomBatchMapState:
        return RandomBatchMapState(self.step_map.with_parameters(y.state, params), y.key)
