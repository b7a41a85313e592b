from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._tree import grad, gradient_function, tree_vdot
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]


def hessian_gradient_product(loss: Loss, y: Y, args: Args) -> tuple[Y, Y]:
    r"""$(\nabla L(y), \nabla^2 L(y) \nabla L(y))$ by one forward-over-reverse product.

    Matrix-free: no Hessian is formed.
    """
    arrays, grad_fn = gradient_function(loss, y, args)
    grad = grad_fn(arrays)
    return grad, jax.jvp(grad_fn, (arrays,), (grad,))[1]


class GradientFlow(AbstractFlow):
    r"""Gradient flow $\dot\theta = -\nabla L(\theta)$: the order-0 flow of gradient descent.

    **Arguments:** `loss`, called as `loss(params, args)`; `h` is kept for
    uniformity (the field does not depend on it).
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)
    order: ClassVar[int] = 0

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        return jtu.tree_map(jnp.negative, grad(self.loss, y, args))

    def modified_loss(self, y: Y, args: Args) -> Scalar:
        return self.loss(y, args)


class IGRFlow(AbstractFlow):
    r"""Implicit gradient regularisation: the order-1 modified flow of gradient descent.

    $$\dot\theta = -\nabla \tilde L(\theta), \qquad
    \tilde L = L + \frac{h}{4}\|\nabla L\|^2,$$

    i.e. $\dot\theta = -\nabla L - \frac{h}{2}\nabla^2 L\,\nabla L$, computed with
    one Hessian-vector product. Gradient descent with step `h` follows it to
    $O(h^3)$ per step.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{barrett2021implicit,
          title={Implicit Gradient Regularization},
          author={Barrett, David G. T. and Dherin, Benoit},
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
        grad, hessian_grad = hessian_gradient_product(self.loss, y, args)
        return jtu.tree_map(lambda g, hg: -g - 0.5 * self.h * hg, grad, hessian_grad)

    def modified_loss(self, y: Y, args: Args) -> Scalar:
        g = grad(self.loss, y, args)
        return self.loss(y, args) + 0.25 * self.h * tree_vdot(g, g)
