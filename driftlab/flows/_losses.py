"""Modified losses as explicit regularisers: callables to train on, or to build flows from."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_step_size, InputError
from .._tree import grad, tree_vdot
from ..integrators._maps import num_batches
from ._gradient import IGRFlow


Loss = Callable[[Y, Args], Scalar]


def _checked_loss(loss) -> Loss:
    if not callable(loss):
        raise InputError("`loss` must be callable as `loss(params, batch)`.")
    return loss


def checked_batches(batches: Args) -> int:
    """The number of batches in a stack, or an `InputError` naming `args`."""
    try:
        return num_batches(batches)
    except ValueError as error:
        raise InputError(str(error)) from None


def batch_gradients(loss: Loss, params: Y, batches: Args) -> Y:
    """The gradients of every batch's loss, stacked along a new leading axis."""
    return jax.vmap(lambda batch: grad(loss, params, batch))(batches)


def igr_loss(loss: Loss, h: RealScalarLike) -> Loss:
    r"""The IGR modified loss $\tilde L(\theta) = L(\theta) + \frac h4\|\nabla L(\theta)\|^2$.

    Returns a callable `(params, args) -> scalar` to train on (explicit gradient
    regularisation, Barrett & Dherin 2021): its gradient flow is `IGRFlow`.

    **Arguments:** `loss`, called as `loss(params, args)`; `h`, the step size
    whose drift the regulariser models (or any regularisation strength).
    """
    return IGRFlow(_checked_loss(loss), check_step_size(h)).modified_loss


def sgd_regulariser(loss: Loss, params: Y, batches: Args) -> Scalar:
    r"""$\frac1{4m}\sum_{k=1}^m \|\nabla L_k(\theta)\|^2$ over a stack of `m` batches.

    Times `h`, this is the implicit regulariser of one SGD epoch in expectation
    over batch orders (Smith, Dherin, Barrett & De 2021).
    """
    grads = batch_gradients(loss, params, batches)
    return 0.25 * tree_vdot(grads, grads) / checked_batches(batches)


def sgd_variance_regulariser(loss: Loss, params: Y, batches: Args) -> Scalar:
    r"""The variance term $\frac1{4m}\sum_k \|\nabla L_k - \nabla L\|^2$, $L = \frac1m\sum_k L_k$.

    The part of the SGD regulariser that GD does not have:
    $\frac1{4m}\sum_k\|g_k\|^2 = \frac14\|g\|^2 + \frac1{4m}\sum_k\|g_k - g\|^2$.
    It is also the small-$h\lambda$ limit of the regulariser of SGD without
    replacement (Beneventano 2023), see `sgd_without_replacement_loss`.
    """
    grads = batch_gradients(loss, params, batches)
    mean = jax.tree_util.tree_map(lambda leaf: jnp.mean(leaf, axis=0), grads)
    deviations = jax.tree_util.tree_map(lambda leaf, g: leaf - g[None], grads, mean)
    return 0.25 * tree_vdot(deviations, deviations) / checked_batches(batches)


def epoch_loss(loss: Loss, params: Y, batches: Args) -> Scalar:
    """The mean of the batch losses, $L = \\frac1m\\sum_k L_k$."""
    return jnp.mean(jax.vmap(loss, in_axes=(None, 0))(params, batches))


def sgd_loss(loss: Loss, h: RealScalarLike) -> Loss:
    r"""The SGD modified loss $\tilde L = L + \frac{h}{4m}\sum_{k=1}^m \|\nabla L_k\|^2$.

    Returns a callable `(params, batches) -> scalar`, where `batches` is a stack
    of `m` batches (leading axis), as `driftlab.SGDEpoch` takes them; $L$ is the
    mean of the batch losses. Smith, Dherin, Barrett & De (2021): SGD with step
    `h`, in expectation over the order of the batches in an epoch, follows
    $-\nabla\tilde L$ to $O(h^2)$; equivalently
    $\tilde L = L_{IGR} + \frac h{4m}\sum_k\|\nabla L_k - \nabla L\|^2$.
    """
    loss = _checked_loss(loss)
    h = check_step_size(h)

    def modified(params: Y, batches: Args) -> Scalar:
        return epoch_loss(loss, params, batches) + h * sgd_regulariser(loss, params, batches)

    return modified


def sgd_without_replacement_loss(loss: Loss, h: RealScalarLike) -> Loss:
    r"""SGD without replacement (Beneventano 2023), small $h\lambda$: the `sgd_loss` value.

    $$\tilde L = L + \frac h4\|\nabla L\|^2 + \frac{h}{4m}\sum_k\|\nabla L_k - \nabla L\|^2.$$

    Beneventano (2023) shows that an epoch of SGD without replacement (random
    reshuffling) is locally equivalent to GD plus an extra step on a regulariser
    built from the covariance of the batch gradients,
    $\Sigma = \frac1m\sum_k (g_k - g)(g_k - g)^\top$, weighted along the
    Hessian's eigendirections by functions of $h\lambda$. Where $h\lambda \ll 1$
    the weights are constant and the extra step is
    $-h\nabla\frac{1}{4}\operatorname{tr}\Sigma$ per unit time, i.e. the
    regulariser `sgd_variance_regulariser` on top of IGR. This function returns
    that small-$h\lambda$ form, which equals `sgd_loss(loss, h)`. For
    $h\lambda = O(1)$ see `sgd_without_replacement_correction` (the exact
    second-order mean epoch) and `sgd_without_replacement_regulariser` (the
    paper's weighted-trace regulariser).
    """
    loss = _checked_loss(loss)
    h = check_step_size(h)

    def modified(params: Y, batches: Args) -> Scalar:
        igr = igr_loss(lambda p, b: epoch_loss(loss, p, b), h)(params, batches)
        return igr + h * sgd_variance_regulariser(loss, params, batches)

    return modified
