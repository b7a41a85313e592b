import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.linalg
from jaxtyping import Array

from .. import _lanczos
from .._custom_types import Args, RealScalarLike, Y
from .._errors import check_float64_tree, InputError
from .._tree import grad, ravel
from ..integrators._maps import num_batches


#: Below this many unknowns, spectra are computed densely (exact and cheap).
DENSE_LIMIT = 256


class HessianSpectrum(eqx.Module):
    r"""Eigenpairs of a Hessian: `eigenvalues` (ascending) and `eigenvectors` (columns, ravelled).

    `residuals` (Lanczos only) are $\|Hu_i - \lambda_i u_i\|$: the eigenvalue error is
    about `residual**2 / gap`, the eigenvector angle about `residual / gap`, and at
    most `residual` (some eigenvalue lies within it). `num_products` (Lanczos only) is
    the number of Hessian-vector products spent.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    method: str = eqx.field(static=True)
    residuals: np.ndarray | None = None
    num_products: int | None = eqx.field(static=True, default=None)


def _ravelled_hvp(loss, params, args):
    flat, unravel = ravel(params)
    grad_flat = lambda x: ravel(grad(loss, unravel(x), args))[0]
    return flat, grad_flat


def _start(n: int) -> Array:
    """The fixed random start of every Krylov run here: reproducible, never symmetry-deficient."""
    return jr.normal(jr.key(0), (n,), jnp.float64)


@eqx.filter_jit
def _device_eigsh(loss, flat, unravel, args, k, which, max_iterations, tol, scale=None):
    grad_flat = lambda x: ravel(grad(loss, unravel(x), args))[0]
    hvp = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]
    if scale is not None:  # the symmetric form D H D of a diagonally scaled Hessian
        hessian_product = hvp
        hvp = lambda v: scale * hessian_product(scale * v)
    return _lanczos.eigsh(
        hvp, _start(flat.size), k, which=which, max_iterations=max_iterations, tol=tol
    )


def hessian_eigenpairs(
    loss,
    params: Y,
    args: Args = None,
    *,
    k: int = 1,
    which: str = "LA",
    method: str = "auto",
    max_iterations: int | None = None,
    tol: float = 1e-10,
) -> HessianSpectrum:
    r"""The `k` extreme eigenpairs of $\nabla^2 L$ at `params`, matrix-free.

    `method="lanczos"` runs Lanczos with full reorthogonalisation on
    Hessian-vector products on the device (jitted, no host round trips), never
    forming the Hessian, until the wanted Ritz pairs have relative residual `tol` or
    `max_iterations` (default `k + 100`, at most `n`) products are spent (check
    `residuals` when the spectrum is clustered);
    `method="dense"` forms it (small models only); `"auto"` picks dense below
    `DENSE_LIMIT` unknowns. `which`: `"LA"` largest algebraic, `"SA"` smallest,
    `"LM"` largest magnitude. Eigenvectors are returned ravelled
    (`jax.flatten_util.ravel_pytree` order over the array leaves).
    """
    return _eigenpairs(loss, params, args, None, k, which, method, max_iterations, tol)


def _eigenpairs(loss, params, args, scale, k, which, method, max_iterations, tol):
    r"""`hessian_eigenpairs` of $DHD$, $D = \operatorname{diag}(\text{scale})$ (or of $H$)."""
    check_float64_tree(params, "params")
    if which not in ("LA", "SA", "LM"):
        raise InputError(f"`which` must be 'LA', 'SA' or 'LM', got {which!r}.")
    flat, grad_flat = _ravelled_hvp(loss, params, args)
    n = flat.size
    if not 1 <= k <= n:
        raise InputError(f"`k` must lie in [1, {n}] (the number of parameters), got {k}.")
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT or k >= n - 1 else "lanczos"
    if method == "dense":
        hessian = np.asarray(jax.jacfwd(grad_flat)(flat))
        if scale is not None:
            hessian = np.asarray(scale)[:, None] * hessian * np.asarray(scale)[None, :]
        values, vectors = scipy.linalg.eigh(0.5 * (hessian + hessian.T))
        index = {"LA": np.arange(n - k, n), "SA": np.arange(k)}.get(which)
        if index is None:
            index = np.sort(np.argsort(np.abs(values))[n - k :])
        return HessianSpectrum(values[index], vectors[:, index], "dense")
    if method != "lanczos":
        raise InputError(f"`method` must be 'auto', 'dense' or 'lanczos', got {method!r}.")
    _, unravel = ravel(params)
    if max_iterations is None:
        max_iterations = k + 100
    values, vectors, residuals, num_products = _device_eigsh(
        loss, flat, unravel, args, k, which, max_iterations, tol, scale
    )
    return HessianSpectrum(
        np.asarray(values),
        np.asarray(vectors),
        "lanczos",
        np.asarray(residuals),
        int(num_products),
    )


def preconditioned_eigenpairs(
    loss,
    params: Y,
    preconditioner: Y,
    args: Args = None,
    *,
    k: int = 1,
    which: str = "LA",
    method: str = "auto",
    max_iterations: int | None = None,
    tol: float = 1e-10,
) -> HessianSpectrum:
    r"""The `k` extreme eigenpairs of the preconditioned Hessian $P^{-1}\nabla^2 L$, matrix-free.

    An adaptive method that divides the step by a diagonal $P$ (RMSProp, Adam) is gradient
    descent in the metric $P$: it is stable while the *preconditioned sharpness*
    $\lambda_1(P^{-1}H)$ stays below its threshold (`preconditioned_stability_threshold`),
    and at the edge of stability it hovers there (Cohen et al. 2022). $P^{-1}H$ is not
    symmetric; it is similar to $P^{-1/2}HP^{-1/2}$, whose eigenpairs are computed here,
    from Hessian-vector products scaled by $P^{-1/2}$ on both sides (the same Lanczos as
    `hessian_eigenpairs`, or dense below `DENSE_LIMIT` unknowns). The eigenvalues are
    those of $P^{-1}H$; the returned unit `eigenvectors` $v_i$ are those of the symmetric
    form (ravelled), and $u_i = P^{-1/2}v_i$ solves $Hu_i = \lambda_i Pu_i$.

    **Arguments:**

    - `loss`, `params`, `args`: as in `hessian_eigenpairs`.
    - `preconditioner`: $P$, the diagonal the optimiser divides its step by, a PyTree
      of the structure of `params` with positive entries. RMSProp:
      $P = \sqrt{v'} + \epsilon$ (or $\sqrt{v' + \epsilon}$), with $v' = \rho v +
      (1-\rho)g^2$ the second moment the step divides by; Adam:
      $P = \sqrt{\hat v'} + \epsilon$ with the bias-corrected $\hat v'$.
    - `k`, `which`, `method`, `max_iterations`, `tol`: as in `hessian_eigenpairs`.

    **Returns:** a `HessianSpectrum` (eigenvalues ascending).

    **Raises:** `InputError` if `preconditioner` does not match `params` or is not positive.

    !!! example
        ```python
        state = driftlab.RMSProp(loss, rho=0.99, eps=0.0, eps_inside_sqrt=False).init(params)
        # ... after some steps, the second moment the next step divides by:
        g = jax.grad(loss)(state.params, args)
        nu = jax.tree.map(lambda v, gi: 0.99 * v + 0.01 * gi**2, state.nu, g)
        P = jax.tree.map(jnp.sqrt, nu)
        sharpness = driftlab.analysis.preconditioned_eigenpairs(
            loss, state.params, P, args
        ).eigenvalues[-1]
        edge = driftlab.analysis.preconditioned_stability_threshold(h)  # 2 / h
        ```

    ??? cite "Reference"
        ```bibtex
        @article{cohen2022adaptive,
          title={Adaptive Gradient Methods at the Edge of Stability},
          author={Cohen, Jeremy M. and Ghorbani, Behrooz and Krishnan, Shankar and
                  Agarwal, Naman and Medapati, Sourabh and Badura, Michal and Suo, Daniel
                  and Cardoze, David and Nado, Zachary and Dahl, George E. and Gilmer, Justin},
          journal={arXiv preprint arXiv:2207.14484},
          year={2022}
        }
        ```
    """
    check_float64_tree(preconditioner, "preconditioner")
    flat = ravel(params)[0]
    try:
        diagonal = ravel(preconditioner)[0]
        same = jax.tree.structure(preconditioner) == jax.tree.structure(params)
    except (TypeError, ValueError):
        same = False
    if not same or diagonal.shape != flat.shape:
        raise InputError(
            "`preconditioner` must be a PyTree of the structure and shapes of `params` "
            "(the diagonal P the optimiser divides its step by, e.g. sqrt(nu) + eps)."
        )
    if not bool(jnp.all(diagonal > 0)):
        raise InputError(
            "`preconditioner` must be positive everywhere (P = sqrt(nu) + eps: pass eps > 0 "
            "where the second moment nu can vanish)."
        )
    return _eigenpairs(loss, params, args, diagonal**-0.5, k, which, method, max_iterations, tol)


def preconditioned_stability_threshold(h: RealScalarLike, b1: RealScalarLike = 0.0) -> float:
    r"""The preconditioned sharpness at which an adaptive method's step turns unstable.

    On a quadratic with $P$ frozen, the update with an EMA of the gradient,
    $m' = \beta_1 m + (1-\beta_1)g$, $\theta' = \theta - hP^{-1}m'$, is stable while every
    eigenvalue of $P^{-1}H$ stays below

    $$\frac{2 + 2\beta_1}{(1 - \beta_1)\,h},$$

    Adam's threshold ($38/h$ at $\beta_1 = 0.9$); at $\beta_1 = 0$, RMSProp's, $2/h$
    (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"). Compare
    it with `preconditioned_eigenpairs(...).eigenvalues[-1]`.

    **Raises:** `InputError` unless $h > 0$ and $0 \le \beta_1 < 1$.
    """
    h, b1 = float(h), float(b1)
    if not h > 0:
        raise InputError(f"`h` must be positive, got {h}.")
    if not 0 <= b1 < 1:
        raise InputError(f"`b1` must lie in [0, 1), got {b1}.")
    return (2 + 2 * b1) / ((1 - b1) * h)


def lambda_max(loss, params: Y, args: Args = None) -> float:
    r"""The largest eigenvalue of $\nabla^2 L$ at `params` (device Lanczos, or dense when small)."""
    return float(hessian_eigenpairs(loss, params, args, k=1, which="LA").eigenvalues[-1])


@eqx.filter_jit
def _device_radius(step, flat, unravel, h, args):
    displacement = lambda z: ravel(step(unravel(z), h, args))[0] - z
    jvp = lambda v: jax.jvp(displacement, (flat,), (v,))[1]
    return _lanczos.spectral_radius(jvp, _start(flat.size))[0]


def stability_index(step, y: Y, h: RealScalarLike, args: Args = None) -> float:
    r"""$\max_i |1 - \mu_i|$ over the eigenvalues $\mu_i$ of the map's Jacobian $D\Phi_h(y)$.

    For gradient descent, $D\Phi_h = I - h\nabla^2 L$, so this is
    $h\lambda_{max}$ (for a positive-definite Hessian): the index reaches 2
    exactly at the edge of stability. For heavy-ball it reaches 2 at
    $h\lambda = 2(1+\beta)$, its own edge. Matrix-free above `DENSE_LIMIT`
    unknowns: Arnoldi with full reorthogonalisation on Jacobian-vector
    products, on the device (jitted, no host round trips).
    """
    check_float64_tree(y, "y", allow_integer=True)
    flat, unravel = ravel(y)
    n = flat.size
    if n <= DENSE_LIMIT:
        displacement = lambda x: ravel(step(unravel(x), h, args))[0] - x
        jacobian = np.asarray(jax.jacfwd(displacement)(flat))
        return float(np.max(np.abs(np.linalg.eigvals(jacobian))))
    return float(_device_radius(step, flat, unravel, h, args))


@eqx.filter_jit
def _device_batch_sharpness(loss, flat, unravel, batches):
    def rayleigh(batch):
        grad_flat = lambda x: ravel(grad(loss, unravel(x), batch))[0]
        gradient, hvp = jax.linearize(grad_flat, flat)
        squared = jnp.vdot(gradient, gradient)
        return jnp.vdot(gradient, hvp(gradient)) / jnp.where(squared > 0, squared, 1.0), squared

    return jax.vmap(rayleigh)(batches)


def batch_sharpness(loss, params: Y, batches: Args) -> float:
    r"""Batch sharpness $\mathbb E_B[g_B^\top H_B g_B / \|g_B\|^2]$ over a stack of batches.

    $g_B$ and $H_B$ are the gradient and Hessian of the minibatch loss
    $L_B$ = `loss(params, B)` at `params`; the mean runs over the leading axis of
    `batches` (draw them as the optimiser does, e.g. uniformly at random, for a
    Monte Carlo estimate of the expectation). It is the curvature of each
    minibatch's loss along its own step: minibatch SGD with step $h$ is unstable
    along its own direction once it exceeds $2/h$. Andreyev & Beneventano find it
    hovers at $2/h$ in training (the *edge of stochastic stability*) while
    $\lambda_{max}$ of the full loss stays below $2/h$; at full batch it is
    $g^\top Hg/\|g\|^2 \le \lambda_{max}$.

    Matrix-free: one gradient and one Hessian-vector product per batch, vmapped and
    jitted on the device (no host round trips; batches may be sharded).

    **Raises:** `driftlab.InputError` if `batches` is not a stack of batches, or if a
    batch's gradient is exactly zero (its Rayleigh quotient is undefined).

    ??? cite "Reference"
        ```bibtex
        @article{andreyev2024edge,
          title={Edge of Stochastic Stability: Revisiting the Edge of Stability for {SGD}},
          author={Andreyev, Arseniy and Beneventano, Pierfrancesco},
          journal={arXiv preprint arXiv:2412.20553},
          year={2024}
        }
        ```
    """
    check_float64_tree(params, "params")
    try:
        num_batches(batches)
    except ValueError as error:
        raise InputError(str(error)) from None
    flat, unravel = ravel(params)
    quotients, squared_norms = _device_batch_sharpness(loss, flat, unravel, batches)
    zero = np.flatnonzero(np.asarray(squared_norms) == 0)
    if zero.size:
        raise InputError(
            f"batch {int(zero[0])} of `batches` has a zero gradient at `params`: its batch "
            "sharpness g^T H g / |g|^2 is undefined; drop that batch or move `params`."
        )
    return float(jnp.mean(quotients))
