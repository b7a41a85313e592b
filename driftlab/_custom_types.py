from typing import Any, TYPE_CHECKING

from jaxtyping import ArrayLike, Float, PyTree, Shaped


if TYPE_CHECKING:
    RealScalarLike = float | int | ArrayLike
else:
    from jaxtyping import Real

    RealScalarLike = Real[ArrayLike, ""]

#: A state: any PyTree of float64 arrays (parameters and optimiser state).
Y = PyTree[Shaped[ArrayLike, "?*y"], "Y"]
#: Data passed to a step map or a flow: a batch, a stack of batches, or `None`.
Args = PyTree[Any]
#: A scalar float64 array.
Scalar = Float[ArrayLike, ""]
