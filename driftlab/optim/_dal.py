"""The drift-adjusted learning rate (DAL) of Rosca, Wu, Qin & Dherin (2023), as optax."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, Float

from .._custom_types import Args, Scalar, Y
from .._errors import InputError
from .._tree import tree_norm


class DALState(NamedTuple):
    """State of `drift_adjusted_learning_rate`: the learning rate of the last update."""

    learning_rate: Float[Array, ""]


def drift_adjusted_learning_rate(
    loss: Callable[[Y, Args], Scalar],
    *,
    power: float = 1.0,
    max_learning_rate: float = 5.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with the drift-adjusted learning rate (DAL), as an optax transform.

    At each update, with $g$ the incoming gradient and $H$ the Hessian of
    `loss(params, args)` at `params` (one Hessian-vector product),

    $$v = \frac{\|Hg\|}{\|g\|}, \qquad h_{DAL} = \min\!\left(\frac{2}{v^{p}},
    h_{max}\right), \qquad \Delta\theta = -h_{DAL}\, g.$$

    For $p = 1$, $h_{DAL}\|Hg\| = 2\|g\|$: the step sits at the edge of stability
    $2/\lambda$ along $g$ when $g$ is an eigenvector, and the drift $\frac{h}{2}\|Hg\|$
    that the principal flow measures stays bounded by $\|g\|$. $p = 0$ is GD with
    step 2 (capped). This matches the authors' released code
    (`DriftAdaptiveLearningRateScaler`: gradients scaled by
    $\mathrm{clip}(2/(\eta v^p), 0, h_{max}/\eta)$ then by a base rate $\eta$, i.e.
    an effective rate $\min(2/v^p, h_{max})$ independent of $\eta$; default cap 5).

    **Arguments:**

    - `loss`: called as `loss(params, args)`; `args` is passed to `update` by
      keyword (`update(grads, state, params, args=batch)`), so the transform
      works inside `optax.chain`.
    - `power`: $p \ge 0$.
    - `max_learning_rate`: the cap $h_{max} > 0$.

    **Returns:** an `optax.GradientTransformationExtraArgs` whose updates are
    $-h_{DAL}\,g$ (apply with `optax.apply_updates`); its state records $h_{DAL}$.

    ??? cite "Reference"
        ```bibtex
        @article{rosca2023continuous,
          title={On a continuous time model of gradient descent dynamics and
                 instability in deep learning},
          author={Rosca, Mihaela and Wu, Yan and Qin, Chongli and Dherin, Benoit},
          journal={Transactions on Machine Learning Research},
          year={2023}
        }
        ```
    """
    if not callable(loss):
        raise InputError("`loss` must be callable as `loss(params, args)`.")
    if not power >= 0:
        raise InputError(f"`power` must be non-negative, got {power}.")
    if not max_learning_rate > 0:
        raise InputError(f"`max_learning_rate` must be positive, got {max_learning_rate}.")

    def init(params: Y) -> DALState:
        del params
        return DALState(jnp.asarray(0.0))

    def update(updates: Y, state: DALState, params: Y | None = None, *, args: Args = None, **extra):
        del state, extra
        if params is None:
            raise InputError(
                "drift_adjusted_learning_rate needs `params` (it takes a Hessian-vector "
                "product at them): call `update(grads, state, params, args=batch)`."
            )
        grad_fn = lambda p: jax.grad(loss)(p, args)
        hessian_grad = jax.jvp(grad_fn, (params,), (updates,))[1]
        grad_norm = tree_norm(updates)
        ratio = tree_norm(hessian_grad) / jnp.where(grad_norm > 0, grad_norm, 1.0)
        learning_rate = jnp.minimum(
            2.0 / jnp.where(ratio > 0, ratio, 1.0) ** power, max_learning_rate
        )
        learning_rate = jnp.where(ratio > 0, learning_rate, max_learning_rate)
        return jtu.tree_map(lambda g: -learning_rate * g, updates), DALState(learning_rate)

    return optax.GradientTransformationExtraArgs(init, update)
