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
def _device_eigsh(loss, flat, unravel, args, k, which, max_iterations, tol):
    grad_flat = lambda x: ravel(grad(loss, unravel(x), args))[0]
    hvp = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]
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
        loss, flat, unravel, args, k, which, max_iterations, tol
    )
    return HessianSpectrum(
        np.asarray(values),
        np.asarray(vectors),
        "lanczos",
        np.asarray(residuals),
        int(num_products),
    )


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
