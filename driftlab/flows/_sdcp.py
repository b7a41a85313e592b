r"""The small semidefinite complementarity problem of the central flow, on device.

For a symmetric $k\times k$ unknown $X$, a positive semidefinite linear map
$\mathcal Q$ on symmetric matrices and a symmetric $C$, find

$$X \succeq 0, \qquad S = \mathcal Q[X] + C \succeq 0, \qquad \langle X, S\rangle = 0,$$

the optimality conditions of the convex QP
$\min_{X\succeq 0} \tfrac12\langle X, \mathcal Q[X]\rangle + \langle C, X\rangle$.
Matrices are handled as `svec` vectors of length $m = k(k+1)/2$ (off-diagonal
entries times $\sqrt 2$, an isometry), so $\mathcal Q$ is an $m\times m$ PSD matrix.

Solver: accelerated projected gradient (FISTA with adaptive restart) on the PSD
cone brings the iterate close, then semismooth Newton on the natural residual
$F(x) = x - \Pi_{\succeq 0}(x - \mathcal Q x - c)$ (the projection's generalised
Jacobian is $V(\Omega\circ V^\top\!\cdot V)V^\top$ in the eigenbasis of its
argument) polishes it to round-off; a Newton step is kept only if it lowers
$\|F\|$, and the polish stops at the first step that does not. At $k = 1$ the
closed form $x = \max(0, -c/q)$ is used; when $C \succeq 0$, $X = 0$ without
iterating.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


#: FISTA iterations before the Newton polish.
GRADIENT_ITERATIONS = 300
#: FISTA stops once a step moves the iterate by less than this (relative); Newton polishes.
STEP_TOLERANCE = 1e-9
#: Semismooth Newton iterations of the polish.
NEWTON_ITERATIONS = 12


def pair_indices(k: int):
    """The `(i, j)`, `i <= j`, of the upper triangle, in `svec` order."""
    return jnp.triu_indices(k)


def svec(matrix: Float[Array, "k k"]) -> Float[Array, " m"]:
    r"""The upper triangle, off-diagonal entries times $\sqrt 2$ (keeps inner products)."""
    i, j = pair_indices(matrix.shape[-1])
    return matrix[..., i, j] * jnp.where(i == j, 1.0, jnp.sqrt(2.0))


def smat(vector: Float[Array, " m"], k: int) -> Float[Array, "k k"]:
    """The inverse of `svec`."""
    i, j = pair_indices(k)
    values = vector * jnp.where(i == j, 1.0, 1 / jnp.sqrt(2.0))
    matrix = jnp.zeros((k, k), vector.dtype).at[i, j].set(values)
    return matrix.at[j, i].set(values)


def _project(x, k):
    values, vectors = jnp.linalg.eigh(smat(x, k))
    return svec((vectors * jnp.maximum(values, 0.0)) @ vectors.T)


def _projection_jacobian(z, k):
    """The generalised Jacobian of the PSD projection at `z` (svec coordinates), m x m."""
    d, v = jnp.linalg.eigh(smat(z, k))
    positive = jnp.maximum(d, 0.0)
    numerator = positive[:, None] - positive[None, :]
    denominator = d[:, None] - d[None, :]
    same = jnp.abs(denominator) <= 1e-14 * (1 + jnp.abs(d).max())
    omega = jnp.where(same, (d[:, None] > 0) * 1.0, numerator / jnp.where(same, 1.0, denominator))

    def apply(e):
        return svec(v @ (omega * (v.T @ smat(e, k) @ v)) @ v.T)

    m = z.size
    return jax.vmap(apply, out_axes=1)(jnp.eye(m, dtype=z.dtype))


def natural_residual(x, q, c, k):
    r"""$\|x - \Pi_{\succeq0}(x - Qx - c)\|$: zero exactly at a solution of the SDCP."""
    return jnp.linalg.norm(x - _project(x - q @ x - c, k))


def solve_sdcp(q: Float[Array, "m m"], c: Float[Array, " m"], k: int) -> Float[Array, " m"]:
    r"""Solve $x \succeq 0$, $Qx + c \succeq 0$, $\langle x, Qx + c\rangle = 0$ (svec form).

    **Arguments:** `q`, the $m\times m$ PSD matrix of $\mathcal Q$; `c`, `svec(C)`;
    `k` (static), the matrix size, $m = k(k+1)/2$.

    **Returns:** `svec(X)`. Non-finite when no solution exists ($\mathcal Q$ zero on
    the directions where $C$ has negative curvature).
    """
    if k == 1:
        return jnp.where(c[0] < 0, -c / q[0, 0], 0.0)
    # X = 0 solves it whenever C is PSD (below the threshold): skip the iterations.
    return jax.lax.cond(
        jnp.linalg.eigvalsh(smat(c, k))[0] >= 0,
        lambda: jnp.zeros_like(c),
        lambda: _iterate(q, c, k),
    )


def _iterate(q, c, k):
    # The solution is invariant under scaling (Q, c) together; scale Q to norm 1.
    scale = jnp.linalg.eigvalsh(q)[-1]
    q, c = q / scale, c / scale

    def fista(carry):
        x, y, t, _, count = carry
        x_new = _project(y - (q @ y + c), k)
        t_new = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        restart = jnp.dot(y - x_new, x_new - x) > 0
        momentum = jnp.where(restart, 0.0, (t - 1) / t_new)
        change = jnp.linalg.norm(x_new - x)
        t_next = jnp.where(restart, 1.0, t_new)
        return x_new, x_new + momentum * (x_new - x), t_next, change, count + 1

    def going(carry):
        x, _, _, change, count = carry
        return (count < GRADIENT_ITERATIONS) & (change > STEP_TOLERANCE * (1 + jnp.linalg.norm(x)))

    x0 = _project(-c, k)
    one = jnp.ones((), c.dtype)
    x = jax.lax.while_loop(going, fista, (x0, x0, one, one, 0))[0]

    def newton(carry):
        x, _, count = carry
        z = x - q @ x - c
        residual = x - _project(z, k)
        jacobian = jnp.eye(c.size, dtype=c.dtype) - _projection_jacobian(z, k) @ (
            jnp.eye(c.size, dtype=c.dtype) - q
        )
        candidate = x + jnp.linalg.solve(jacobian, -residual)
        better = jnp.all(jnp.isfinite(candidate)) & (
            natural_residual(candidate, q, c, k) < jnp.linalg.norm(residual)
        )
        return jnp.where(better, candidate, x), better, count + 1

    # Stop at the first step that does not lower the residual (round-off reached).
    improving = lambda carry: carry[1] & (carry[2] < NEWTON_ITERATIONS)
    return jax.lax.while_loop(improving, newton, (x, jnp.asarray(True), 0))[0]
