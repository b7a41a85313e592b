import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from .._custom_types import Args, RealScalarLike, Y
from .._errors import check_float64_tree, InputError
from .._tree import grad, ravel


#: Below this many unknowns, spectra are computed densely (exact and cheap).
DENSE_LIMIT = 256


class HessianSpectrum(eqx.Module):
    """Eigenpairs of a Hessian: `eigenvalues` (ascending) and `eigenvectors` (columns, ravelled)."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    method: str = eqx.field(static=True)


def _ravelled_hvp(loss, params, args):
    flat, unravel = ravel(params)
    grad_flat = lambda x: ravel(grad(loss, unravel(x), args))[0]
    # The point and the data are arguments, not constants: XLA would spend seconds
    # folding a large model's constants into the compiled product.
    product = eqx.filter_jit(
        lambda x, v, data: jax.jvp(lambda z: ravel(grad(loss, unravel(z), data))[0], (x,), (v,))[1]
    )
    hvp = lambda v: product(flat, v, args)
    return flat, grad_flat, hvp


def hessian_eigenpairs(
    loss,
    params: Y,
    args: Args = None,
    *,
    k: int = 1,
    which: str = "LA",
    method: str = "auto",
) -> HessianSpectrum:
    r"""The `k` extreme eigenpairs of $\nabla^2 L$ at `params`, matrix-free.

    `method="lanczos"` runs `scipy.sparse.linalg.eigsh` (implicitly restarted
    Lanczos) on Hessian-vector products, never forming the Hessian;
    `method="dense"` forms it (small models only); `"auto"` picks dense below
    `DENSE_LIMIT` unknowns. `which` is eigsh's: `"LA"` largest algebraic,
    `"SA"` smallest, `"LM"` largest magnitude. Eigenvectors are returned
    ravelled (`jax.flatten_util.ravel_pytree` order).
    """
    check_float64_tree(params, "params")
    flat, grad_flat, hvp = _ravelled_hvp(loss, params, args)
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
    operator = scipy.sparse.linalg.LinearOperator(
        (n, n),
        matvec=lambda v: np.asarray(hvp(jnp.asarray(v, jnp.float64))),
        dtype=np.float64,
    )
    start = np.random.default_rng(0).standard_normal(n)
    values, vectors = scipy.sparse.linalg.eigsh(operator, k=k, which=which, v0=start, tol=1e-10)
    order = np.argsort(values)
    return HessianSpectrum(values[order], vectors[:, order], "lanczos")


def lambda_max(loss, params: Y, args: Args = None) -> float:
    r"""The largest eigenvalue of $\nabla^2 L$ at `params` (Lanczos or dense)."""
    return float(hessian_eigenpairs(loss, params, args, k=1, which="LA").eigenvalues[-1])


def stability_index(step, y: Y, h: RealScalarLike, args: Args = None) -> float:
    r"""$\max_i |1 - \mu_i|$ over the eigenvalues $\mu_i$ of the map's Jacobian $D\Phi_h(y)$.

    For gradient descent, $D\Phi_h = I - h\nabla^2 L$, so this is
    $h\lambda_{max}$ (for a positive-definite Hessian): the index reaches 2
    exactly at the edge of stability. For heavy-ball it reaches 2 at
    $h\lambda = 2(1+\beta)$, its own edge. Matrix-free (ARPACK on
    Jacobian-vector products) above `DENSE_LIMIT` unknowns.
    """
    flat, unravel = ravel(y)
    displacement = lambda x: ravel(step(unravel(x), h, args))[0] - x
    n = flat.size
    if n <= DENSE_LIMIT:
        jacobian = np.asarray(jax.jacfwd(displacement)(flat))
        return float(np.max(np.abs(np.linalg.eigvals(jacobian))))
    product = eqx.filter_jit(
        lambda x, v, data: jax.jvp(lambda z: ravel(step(unravel(z), h, data))[0] - z, (x,), (v,))[1]
    )
    jvp = lambda v: product(flat, v, args)
    operator = scipy.sparse.linalg.LinearOperator(
        (n, n),
        matvec=lambda v: np.asarray(jvp(jnp.asarray(v, jnp.float64))),
        dtype=np.float64,
    )
    start = np.random.default_rng(0).standard_normal(n)
    values = scipy.sparse.linalg.eigs(operator, k=1, which="LM", v0=start, tol=1e-8)[0]
    return float(np.max(np.abs(values)))
