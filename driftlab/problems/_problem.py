from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from equinox import AbstractVar

from .._custom_types import Args, Scalar, Y
from .._errors import InputError


class AbstractProblem(eqx.Module):
    r"""A loss to study: `loss(params, batch)`, initial parameters and data.

    **Attributes:**

    - `name`: a short name (used by the CLI and in result files).
    - `loss`: called as `loss(params, batch)`.
    - `params`: seeded initial parameters, a PyTree of float64 arrays.
    - `data`: the full batch, to pass as `args` for full-batch optimisers.
    """

    name: AbstractVar[str]
    loss: AbstractVar[Callable[[Y, Args], Scalar]]
    params: AbstractVar[Y]
    data: AbstractVar[Args]

    def batches(self, num_batches: int, *, seed: int = 0) -> Args:
        """The data split into `num_batches` equal batches, shuffled with `seed`.

        **Returns:** a stack of batches (leading axis `num_batches`), as
        `driftlab.SGDEpoch` takes them. Samples that do not fill a batch are
        dropped.
        """
        num_samples = jtu.tree_leaves(self.data)[0].shape[0]
        if not 1 <= num_batches <= num_samples:
            raise InputError(f"`num_batches` must lie in [1, {num_samples}], got {num_batches}.")
        order = np.random.default_rng(seed).permutation(num_samples)
        size = num_samples // num_batches
        order = order[: size * num_batches]
        return jtu.tree_map(
            lambda x: jnp.asarray(x)[order].reshape(num_batches, size, *x.shape[1:]),
            self.data,
        )


class Problem(AbstractProblem):
    """A problem given by its loss, initial parameters and data; see `AbstractProblem`."""

    name: str = eqx.field(static=True)
    loss: Callable[[Y, Args], Scalar]
    params: Y
    data: Args
