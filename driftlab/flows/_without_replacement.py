r"""SGD without replacement at $h\lambda = O(1)$ (Beneventano 2023): the expected epoch.

One epoch visits $m$ batches once each, in a uniformly random order $\sigma$:
$\theta_{j+1} = \theta_j - h\nabla L_{\sigma(j)}(\theta_j)$. Write $g_a$, $H_a$ for
batch $a$'s gradient and Hessian at the epoch's start $\theta$, $g$, $H$ for those
of $L = \frac1m\sum_a L_a$, $e_a = g_a - g$ (the gradient noise),
$J_a = H_a - H$ and $M = I - hH$. Expanding the epoch about $m$ steps of GD in
the batch differences, the first-order term averages to zero over orders, and
the second-order one has two parts. (i) Two steps $i < j$ hold two *different*
batches, $\mathbb E[J_{\sigma(j)} X e_{\sigma(i)}] = -\frac1{m(m-1)}\sum_a J_a X e_a$
(the differences sum to zero; with replacement this averages to zero). (ii) The
noise's own first-order displacement $u_j = -h\sum_{i<j}M^{j-1-i}e_{\sigma(i)}$
meets the third derivative, $\frac12 D^3L[u_j, u_j]$, whose mean over orders
uses the same pair covariance. With $Q(\mu) = \sum_{n=1}^{m-1}\mu^n$,

$$\mathbb E_\sigma[\text{epoch}](\theta) = \mathrm{GD}_h^m(\theta)
 - \frac{h^2}{m(m-1)}\sum_a\Big[\sum_{p+q\le m-2} M^pJ_aM^q e_a
 + \frac h2\sum_{j<m} M^{m-1-j}\Big(m\sum_{q<j}D^3L[M^qe_a, M^qe_a]
 - D^3L[x_{a,j}, x_{a,j}]\Big)\Big]
 + \cdots,$$

$x_{a,j} = \sum_{q<j}M^qe_a$. The first sum is $DQ(M)[J_a]\,e_a$, the Fréchet
derivative of the matrix polynomial $Q$ (in $H$'s eigenbasis, $J_a$'s entries
times the divided differences $(Q(\mu_k) - Q(\mu_l))/(\mu_k - \mu_l)$). The dots
are third order in the differences and, away from a stationary point of $L$,
terms of second order in the differences and first in $g$ (the noise moves
along GD's path; on the digits MLP near a minimum they are the remaining
0.4-2.3% of the second-order coefficient at $h\lambda_{max}$ = 0.25-1.5). At a
stationary point the bracket is the whole second-order term:
`tests/test_without_replacement.py` extracts it from the mean over all $m!$
orders, on quadratic batches and on batches with a quartic term, and matches
it to $O(\epsilon^2)$.

Beneventano's "additional step on a regulariser" keeps only the part of
$DQ(M)[J_a]$ diagonal in $H$'s eigenbasis, $J_aQ'(M)$ (and no third
derivative): a step of size $h$ on

$$R(\theta) = \frac{h}{2(m-1)}\operatorname{tr}\big(F(hH)\,\Sigma(\theta)\big),\qquad
\Sigma = \frac1m\sum_a e_ae_a^\top,\qquad F(x) = Q'(1 - x) = \sum_{n=0}^{m-2}(n+1)(1-x)^n,$$

with the weights $F(hH)$ held fixed. $F(0) = m(m-1)/2$ gives the small-$h\lambda$
regulariser $\frac{hm}4\operatorname{tr}\Sigma$ per epoch (`sgd_without_replacement_loss`);
$F(x) \to 1/x^2$ along sharp directions ($mh\lambda \gg 1$, $h\lambda < 2$): the
covariance is not regularised there; it grows geometrically for $\lambda < 0$.
The two forms agree when every $J_a$ commutes with $H$; otherwise the weighted
trace misses the off-diagonal divided differences (measured on random quadratic
batches: 8% of the second-order term at $h\lambda_{max} = 0.5$, 24% at 1.5,
against 23% and 62% for the small-$h\lambda$ form).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_step_size, InputError
from .._lanczos import lanczos
from .._tree import grad, ravel
from ._losses import checked_batches


Loss = Callable[[Y, Args], Scalar]


def _checked(loss, batches) -> int:
    if not callable(loss):
        raise InputError("`loss` must be callable as `loss(params, batch)`.")
    m = checked_batches(batches)
    if m < 2:
        raise InputError(
            f"`batches` must stack at least 2 batches (an epoch of one batch is GD), got {m}."
        )
    return m


def _batch_gradient(loss, unravel):
    return lambda flat, batch: ravel(grad(loss, unravel(flat), batch))[0]


def covariance_weights(x, num_batches: int):
    r"""$F(x) = \sum_{n=0}^{m-2}(n+1)(1-x)^n$: the weight of the noise covariance along an
    eigendirection with $h\lambda = x$, for $m$ = `num_batches` batches per epoch."""
    powers = jnp.arange(num_batches - 1)
    return jnp.sum((powers + 1) * (1 - jnp.asarray(x)[..., None]) ** powers, axis=-1)


def sgd_without_replacement_correction(
    loss: Loss, params: Y, batches: Args, h: RealScalarLike
) -> Y:
    r"""The mean epoch of SGD without replacement minus $m$ GD steps, to second order.

    $$\mathbb E_\sigma[\text{epoch}](\theta) - \mathrm{GD}_h^m(\theta) \approx
    -\frac{h^2}{m(m-1)}\sum_{a=1}^m\Big[\sum_{p+q\le m-2}(I - hH)^p(H_a - H)(I - hH)^q(g_a - g)
    + \frac h2\,(\text{third-derivative terms})\Big],$$

    valid for $h\lambda = O(1)$; the third-derivative terms are written out in the
    module's derivation (they vanish on quadratic batches). At a stationary point
    of $L$ this is the whole term of second order in the batch differences.
    Matrix-free: per batch, $m$ steps of a linear recurrence on Hessian-vector
    products and two third-derivative products $D^3L[v, v]$ (forward over
    forward-over-reverse) per step: about $5m^2$ full-loss Hessian-vector products
    in all (for the few batches of a verification; the weighted-trace form
    `sgd_without_replacement_regulariser` scales to many).

    **Arguments:** `loss(params, batch)`; `params`; `batches`, a stack of $m \ge 2$
    batches (leading axis); `h`, the step size.

    **Returns:** the displacement, with the structure of `params`' array leaves.

    ??? cite "Reference"
        ```bibtex
        @article{beneventano2023trajectories,
          title={On the Trajectories of {SGD} Without Replacement},
          author={Beneventano, Pierfrancesco},
          journal={arXiv preprint arXiv:2312.16143},
          year={2023}
        }
        ```
    """
    m = _checked(loss, batches)
    h = check_step_size(h)
    flat, unravel = ravel(params)
    batch_gradient = _batch_gradient(loss, unravel)

    def full_gradient(x):
        return jnp.mean(jax.vmap(batch_gradient, in_axes=(None, 0))(x, batches), axis=0)

    mean, full_hvp = jax.linearize(full_gradient, flat)

    def third(v):
        # D^3 L[v, v]: the change of the Hessian-vector product H v along v.
        return jax.jvp(lambda x: jax.jvp(full_gradient, (x,), (v,))[1], (flat,), (v,))[1]

    def second_order(batch):
        gradient, batch_hvp = jax.linearize(lambda x: batch_gradient(x, batch), flat)
        noise = gradient - mean

        def step(carry, _):
            # x: the sum of batch a's noise propagated since it was met, sum_{i<j} M^(j-1-i) e_a;
            # z = M^j e_a and w = sum_{q<j} D^3L[M^q e_a, M^q e_a] (the covariance of the
            # first-order displacement); y: the second-order response.
            x, y, z, w = carry
            hx = full_hvp(x)
            source = batch_hvp(x) - hx + 0.5 * h * (m * w - third(x))
            y = y - h * full_hvp(y) + source
            return (x - h * hx + noise, y, z - h * full_hvp(z), w + third(z)), None

        zero = jnp.zeros_like(flat)
        return jax.lax.scan(step, (zero, zero, noise, zero), None, length=m)[0][1]

    total = jnp.sum(jax.vmap(second_order)(batches), axis=0)
    return unravel(-(h**2) / (m * (m - 1)) * total)


def sgd_without_replacement_regulariser(
    loss: Loss, h: RealScalarLike, *, num_iterations: int | None = None
) -> Loss:
    r"""Beneventano's regulariser $R = \frac{h}{2(m-1)}\operatorname{tr}(F(hH)\Sigma)$.

    $\Sigma = \frac1m\sum_a(g_a - g)(g_a - g)^\top$ is the covariance of the batch
    gradients, $F(x) = \sum_{n=0}^{m-2}(n+1)(1-x)^n$ (`covariance_weights`) weighs
    it along $H$'s eigendirections, and an epoch of SGD without replacement is, in
    expectation over orders, $m$ GD steps plus one step $-h\nabla R$ with
    $F(hH)$ held fixed (the gradient returned here). For $h\lambda\to0$,
    $-h\nabla R \to -mh\cdot h\nabla\frac14\operatorname{tr}\Sigma$, the extra step of
    `sgd_without_replacement_loss`. It keeps the part of the exact second-order
    term (`sgd_without_replacement_correction`) diagonal in $H$'s eigenbasis and
    equals it when the batch Hessians commute with $H$.

    Matrix-free: $F(hH)(g_a - g)$ is the Lanczos approximation $V F(hT) V^\top(g_a - g)$
    from the Krylov space of $H$ started at $g_a - g$, with `num_iterations`
    Hessian-vector products per batch (default $m - 1$, where it is exact: $F$
    is a polynomial of degree $m - 2$). The value is $R$; its gradient treats $F(hH)$
    as fixed.

    **Arguments:** `loss(params, batch)`; `h`, the step size; `num_iterations`, the
    Krylov dimension (cap it for epochs of many batches).

    **Returns:** a callable `(params, batches) -> scalar`, `batches` a stack of
    $m \ge 2$ batches.

    ??? cite "Reference"
        ```bibtex
        @article{beneventano2023trajectories,
          title={On the Trajectories of {SGD} Without Replacement},
          author={Beneventano, Pierfrancesco},
          journal={arXiv preprint arXiv:2312.16143},
          year={2023}
        }
        ```
    """
    h = check_step_size(h)
    if num_iterations is not None and (not isinstance(num_iterations, int) or num_iterations < 1):
        raise InputError(f"`num_iterations` must be a positive integer, got {num_iterations!r}.")

    def regulariser(params: Y, batches: Args) -> Scalar:
        m = _checked(loss, batches)
        flat, unravel = ravel(params)
        batch_gradient = _batch_gradient(loss, unravel)
        grads = jax.vmap(batch_gradient, in_axes=(None, 0))(flat, batches)
        noise = grads - jnp.mean(grads, axis=0)
        frozen = jax.lax.stop_gradient(flat)

        def full_gradient(x):
            return jnp.mean(jax.vmap(batch_gradient, in_axes=(None, 0))(x, batches), axis=0)

        full_hvp = jax.linearize(full_gradient, frozen)[1]
        k = min(num_iterations or m - 1, flat.size)

        def weighted(v):
            values, vectors = lanczos(full_hvp, v, k)
            return vectors @ (covariance_weights(h * values, m) * (vectors.T @ v))

        fixed_noise = jax.lax.stop_gradient(noise)
        weights = jax.lax.stop_gradient(jax.vmap(weighted)(fixed_noise))
        # 2<w, e(theta)> - <w, e(theta_0)>: the value tr(F Sigma), the gradient 2 J F e.
        trace = jnp.sum(weights * (2 * noise - fixed_noise)) / m
        return h / (2 * (m - 1)) * trace

    return regulariser
