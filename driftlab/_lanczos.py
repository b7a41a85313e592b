r"""Device-resident Krylov eigensolvers: Lanczos and Arnoldi with full reorthogonalisation.

Everything here is `jax.jit`-able and runs on the device holding the operands:
no host round trips, so the same code serves CPU, GPU and a sharded mesh.
Flows (`CentralFlow`, `PrincipalFlow`) and measurements (`hessian_eigenpairs`,
`lambda_max`, `stability_index`) take their spectra from here; this module
sits below both.

Why not a library: `matfree` (0.6) provides a jittable Lanczos tridiagonalisation
with full reorthogonalisation, but as a building block for matrix functions
(`tridiag_sym` returns the decomposition, not Ritz pairs with residuals), with
no convergence test and no Arnoldi eigenvalues; the eigensolver on top of it
would be the code below anyway, plus a dependency. `jax.experimental.sparse.linalg.lobpcg_standard`
needs `k * 5 < n` and an initial block, and its tolerance is relative to the
operator size. These routines are short, tested against dense `eigh` and scipy's
ARPACK, and stop on the Ritz residual bound of exact arithmetic (valid here
because every new Lanczos vector is orthogonalised twice against the whole basis).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


Matvec = Callable[[Array], Array]

#: The convergence test runs every this many Lanczos steps.
_CHECK_EVERY = 4
#: Basis rows per block of the reorthogonalisation (the basis is padded to whole blocks).
_BLOCK = 8
#: A Krylov vector whose norm falls below this times the operator's scale ends the run.
_BREAKDOWN = 1e-13


def _unit(v: Array) -> Array:
    norm = jnp.linalg.norm(v)
    return jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0), 0.0)


def _orthogonalise(basis: Array, w: Array, size: Array) -> tuple[Array, Array]:
    """`w` orthogonalised against the first `size` rows of `basis` (the rest are zero),
    and its coefficients along them (`basis @ w` before, zero beyond `size`).

    Block by block over the filled blocks only: the whole `m x n` basis would be read at
    every step, which at 1e6 parameters and m = 101 costs about nine gradients' time.
    """

    def project_out(block, carry):
        w, coefficients = carry
        rows = jax.lax.dynamic_slice_in_dim(basis, block * _BLOCK, _BLOCK)
        along = rows @ w
        added = jax.lax.dynamic_slice_in_dim(coefficients, block * _BLOCK, _BLOCK) + along
        coefficients = jax.lax.dynamic_update_slice_in_dim(coefficients, added, block * _BLOCK, 0)
        return w - rows.T @ along, coefficients

    filled = (size + _BLOCK - 1) // _BLOCK
    carry = (w, jnp.zeros(basis.shape[0], w.dtype))
    # Twice is enough (Kahan's "twice is enough"): one pass loses orthogonality
    # at the level of the basis' condition times round-off.
    carry = jax.lax.fori_loop(0, filled, project_out, carry)
    return jax.lax.fori_loop(0, filled, project_out, carry)


def _empty_basis(rows: int, n: int, dtype) -> Array:
    """A zero basis of `rows` vectors, padded to whole blocks."""
    return jnp.zeros((-(-rows // _BLOCK) * _BLOCK, n), dtype)


def lanczos(hvp: Matvec, start: Array, num_iterations: int):
    r"""`num_iterations` steps of Lanczos with full reorthogonalisation, jittable.

    **Returns:** `(ritz_values, ritz_vectors)`, ascending, with the Ritz vectors as
    columns, from the Krylov space $\mathcal K(H, \text{start})$. If the Krylov
    space is exhausted early, the extra Ritz vectors are zero.
    """
    values, vectors, basis, _, _ = _lanczos_run(hvp, start, num_iterations, None, 0, "LA")
    return values, basis.T @ vectors


def _select(values: Array, which: str, count: int) -> Array:
    """Indices of the `count` wanted Ritz values, in ascending order of value."""
    if which == "LA":
        index = jnp.argsort(values)[-count:]
    elif which == "SA":
        index = jnp.argsort(values)[:count]
    else:
        index = jnp.argsort(jnp.abs(values))[-count:]
    return index[jnp.argsort(values[index])]


def _lanczos_run(hvp, start, max_iterations, tol, k, which):
    """Lanczos until the `k` wanted Ritz pairs have relative residual <= `tol` (or the cap).

    **Returns:** `(values, vectors, basis, residuals, size)`: the Ritz vectors in the
    basis' coordinates (`basis.T @ vectors[:, i]` is Ritz vector `i`; forming only the
    wanted ones costs $O(n m k)$ instead of $O(n m^2)$).
    """
    return _lanczos_scaled_run(hvp, start, max_iterations, tol, k, which)[:5]


def _lanczos_scaled_run(hvp, start, max_iterations, tol, k, which, check_every=_CHECK_EVERY):
    """`_lanczos_run` with the test every `check_every` steps; also returns the run's
    operator scale (the largest `|alpha| + beta` seen), which the test is relative to."""
    n = start.size
    m = max_iterations
    dtype = start.dtype

    def tridiagonal(alphas, betas, size, scale):
        # Unused rows hold a value no wanted Ritz value can be beaten by, and no coupling.
        live = jnp.arange(m) < size
        pad = {"LA": -3.0 * scale - 1.0, "SA": 3.0 * scale + 1.0}.get(which, 0.0)
        diagonal = jnp.where(live, alphas, pad)
        off = jnp.where(jnp.arange(m - 1) < size - 1, betas[:-1], 0.0)
        return jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)

    def ritz(carry):
        _, alphas, betas, _, _, _, size, scale, _ = carry
        values, vectors = jnp.linalg.eigh(tridiagonal(alphas, betas, size, scale))
        return values, vectors, betas[jnp.maximum(size - 1, 0)]

    def residuals_small(carry):
        size, scale = carry[6], carry[7]
        values, vectors, beta_last = ritz(carry)
        index = _select(values, which, k)
        residual = jnp.abs(beta_last * vectors[size - 1, index])
        return _small(residual, values[index], scale, tol)

    def converged(carry):
        size, exhausted = carry[6], carry[8]
        if tol is None:
            return exhausted
        # The m x m eigensolve of the test costs more than a cheap product: test every
        # `check_every` steps only.
        due = (size >= k) & (size % check_every == 0)
        return exhausted | jax.lax.cond(due, residuals_small, lambda _: False, carry)

    def cond(carry):
        return (carry[6] < m) & ~converged(carry)

    def body(carry):
        basis, alphas, betas, q, q_prev, beta_prev, size, scale, _ = carry
        basis = basis.at[size].set(q)
        w = hvp(q)
        alpha = q @ w
        w, _ = _orthogonalise(basis, w - alpha * q - beta_prev * q_prev, size + 1)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        exhausted = beta <= _BREAKDOWN * scale
        q_next = jnp.where(exhausted, 0.0, w / jnp.where(exhausted, 1.0, beta))
        beta = jnp.where(exhausted, 0.0, beta)
        alphas, betas = alphas.at[size].set(alpha), betas.at[size].set(beta)
        return basis, alphas, betas, q_next, q, beta, size + 1, scale, exhausted

    q0 = _unit(start)
    zero = jnp.zeros((), dtype)
    carry = (
        _empty_basis(m, n, dtype),
        jnp.zeros(m, dtype),
        jnp.zeros(m, dtype),
        q0,
        jnp.zeros_like(q0),
        zero,
        jnp.asarray(0),
        zero,
        jnp.linalg.norm(start) == 0,
    )
    if tol is None:
        carry = jax.lax.fori_loop(0, m, lambda _, c: body(c), carry)
    else:
        carry = jax.lax.while_loop(cond, body, carry)
    values, vectors, beta_last = ritz(carry)
    size = carry[6]
    residuals = jnp.abs(beta_last * vectors[jnp.maximum(size - 1, 0)])
    return values, vectors, carry[0][:m], residuals, size, carry[7]


def _small(residuals, values, scale, tol):
    """Whether every residual is within `tol` of its Ritz value (or of `1e-3 * scale`)."""
    return jnp.all(residuals <= tol * jnp.maximum(jnp.abs(values), 1e-3 * scale))


def eigsh(
    hvp: Matvec,
    start: Float[Array, " n"],
    k: int,
    *,
    which: str = "LA",
    max_iterations: int | None = None,
    tol: float = 1e-10,
):
    r"""The `k` extreme eigenpairs of a symmetric operator, by Lanczos, on device.

    Runs Lanczos with full reorthogonalisation from `start` until the `k` wanted
    Ritz pairs $(\theta_i, y_i)$ have residual
    $\|H y_i - \theta_i y_i\| = \beta_m |s_{m,i}| \le \text{tol}\,|\theta_i|$
    (exact with a reorthogonalised basis), the Krylov space is exhausted, or
    `max_iterations` (default `min(n, max(4k, k + 60))`) products were spent.
    The eigenvalue error is then about $\text{residual}^2/\text{gap}$, the
    eigenvector angle about $\text{residual}/\text{gap}$. Memory: the basis,
    `max_iterations * n` numbers; time: one product and $O(m\,n)$ per step plus
    an $m\times m$ tridiagonal eigensolve.

    **Arguments:**

    - `hvp`: $v \mapsto Hv$ for a symmetric $H$ (traceable).
    - `start`: the starting vector (its direction must not be orthogonal to the
      wanted eigenvectors; a fixed random vector is safe).
    - `k`: how many eigenpairs (static).
    - `which`: `"LA"` largest algebraic, `"SA"` smallest, `"LM"` largest magnitude.
    - `max_iterations`, `tol`: the cap and the relative residual wanted.

    **Returns:** `(values, vectors, residuals, num_products)`: the `k` Ritz values
    ascending, their unit Ritz vectors as columns, their residual norms
    $\|Hy_i - \theta_i y_i\|$, and the number of products spent.
    """
    n = start.size
    if max_iterations is None:
        max_iterations = max(4 * k, k + 60)
    max_iterations = min(max_iterations, n)
    values, vectors, basis, residuals, size = _lanczos_run(
        hvp, start, max_iterations, tol, k, which
    )
    index = _select(values, which, k)
    return values[index], basis.T @ vectors[:, index], residuals[index], size


def warm_eigsh(
    hvp: Matvec,
    start: Float[Array, " n"],
    cold_start: Float[Array, " n"],
    k: int,
    *,
    num_kept: int,
    max_iterations: int,
    cold_iterations: int,
    tol: float = 1e-10,
):
    r"""The `k` largest eigenpairs of an operator near one already solved, on device.

    Along a path of slowly changing operators (the Hessian along a flow), the top
    eigenvectors at one point nearly span the top invariant subspace at the next. Lanczos
    started from a combination of them, $s = \sum_i \pm y_i$, finds that subspace in
    about `num_kept` products (exactly, if nothing moved: the Krylov space of $s$ is
    then invariant) and then polishes it; the test of `eigsh`, run here at *every*
    step, stops it once the `k` largest Ritz pairs have relative residual `tol`. The
    Krylov vectors are fresh directions: they see any eigenvector that $s$ has a
    component along, so an eigenvalue that crosses into the top `k` from the
    `num_kept - k` tracked below it (the guards) is found, and crossings inside the top
    `k` are simply a reordering.

    If the test still fails after `max_iterations` products (a stale or degenerate start,
    an eigenvector that moved too far), or the run ended before `k` Ritz pairs (a start
    inside a smaller invariant subspace, or a zero start, which asks for a cold solve),
    the warm result is dropped and `eigsh` runs cold from `cold_start`, up to
    `cold_iterations` products: the answer meets the same test either way, only the
    cost differs. Under `vmap` both branches run.

    **Limits.** The residual test certifies Ritz pairs, not that they are the *largest*
    eigenvalues: an eigenvector with no component in $s$ (one that rose past all
    `num_kept` tracked ones within one call) is not seen, exactly as a cold start
    orthogonal to it would not see it.

    **Returns:** `(values, vectors, kept, residuals, num_products, warm)`: the `k`
    largest Ritz values ascending and their unit vectors as columns, the `num_kept`
    largest Ritz vectors (for the next start), the `k` residual norms, the products
    spent (warm and cold together), and whether the warm run passed.
    """
    m = min(max(max_iterations, num_kept), start.size)  # room for the kept Ritz vectors
    values, vectors, basis, residuals, size, scale = _lanczos_scaled_run(
        hvp, start, m, tol, k, "LA", check_every=1
    )
    index = _select(values, "LA", num_kept)
    wanted = index[num_kept - k :]
    passed = (size >= k) & _small(residuals[wanted], values[wanted], scale, tol)
    kept = basis.T @ vectors[:, index]
    warm = (values[wanted], kept[:, num_kept - k :], kept, residuals[wanted], size)

    def cold(_):
        values, vectors, basis, residuals, size = _lanczos_run(
            hvp, cold_start, min(cold_iterations, start.size), tol, k, "LA"
        )
        index = _select(values, "LA", num_kept)
        kept = basis.T @ vectors[:, index]
        wanted = index[num_kept - k :]
        return values[wanted], kept[:, num_kept - k :], kept, residuals[wanted], size

    values, vectors, kept, residuals, spent = jax.lax.cond(passed, lambda _: warm, cold, None)
    # `spent` is the warm run's products if it passed, else the cold run's, spent after it.
    return values, vectors, kept, residuals, jnp.where(passed, size, size + spent), passed


def spectral_radius(
    matvec: Matvec,
    start: Float[Array, " n"],
    *,
    max_iterations: int = 80,
    tol: float = 1e-10,
):
    r"""$\max_i|\mu_i|$ of a general (non-symmetric) operator, by Arnoldi, on device.

    Arnoldi with full reorthogonalisation from `start`; stops once the Ritz value
    of largest modulus has residual $h_{m+1,m}|e_m^\top s| \le \text{tol}\,|\theta|$,
    the Krylov space is exhausted, or after `max_iterations` products. The small
    Hessenberg eigenproblem is solved by `jnp.linalg.eig`.

    **Returns:** `(radius, num_products)`.
    """
    n = start.size
    m = min(max_iterations, n)
    dtype = start.dtype

    def largest(hessenberg, size):
        values, vectors = jnp.linalg.eig(hessenberg[:m, :m])
        index = jnp.argmax(jnp.abs(values))
        residual = jnp.abs(hessenberg[size, size - 1] * vectors[size - 1, index])
        return jnp.abs(values[index]), residual

    def cond(carry):
        _, hessenberg, _, size, scale, exhausted = carry
        radius, residual = largest(hessenberg, jnp.maximum(size, 1))
        done = (size > 0) & (residual <= tol * jnp.maximum(radius, 1e-3 * scale))
        return (size < m) & ~exhausted & ~done

    def body(carry):
        basis, hessenberg, q, size, scale, _ = carry
        basis = basis.at[size].set(q)
        w = matvec(q)
        w, coefficients = _orthogonalise(basis, w, size + 1)
        coefficients = coefficients[:m]
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.linalg.norm(coefficients) + beta)
        exhausted = beta <= _BREAKDOWN * scale
        hessenberg = hessenberg.at[:m, size].set(coefficients)
        hessenberg = hessenberg.at[size + 1, size].set(jnp.where(exhausted, 0.0, beta))
        q_next = jnp.where(exhausted, 0.0, w / jnp.where(exhausted, 1.0, beta))
        return basis, hessenberg, q_next, size + 1, scale, exhausted

    carry = (
        _empty_basis(m, n, dtype),
        jnp.zeros((m + 1, m), dtype),
        _unit(start),
        jnp.asarray(0),
        jnp.zeros((), dtype),
        jnp.linalg.norm(start) == 0,
    )
    carry = jax.lax.while_loop(cond, body, carry)
    radius, _ = largest(carry[1], jnp.maximum(carry[3], 1))
    return radius, carry[3]
