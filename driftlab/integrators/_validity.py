r"""Where a map with auxiliary state has a slow manifold: measured on its linearisation.

A map on $(\theta, a)$ whose auxiliary part decays ($a' = D a + \dots$ at $h = 0$)
has, for small $h$, $n_\theta$ *slow* eigenvalues of its Jacobian near 1 and
$n_a$ *fast* ones near the entries of $D$. Its slow invariant manifold (where
the modified flows of heavy-ball, Nesterov, Adam and RMSProp live) persists
while the two groups stay apart, continuously from $h = 0$: the $n_\theta$
eigenvalues of largest modulus are strictly larger in modulus than all the
others, their eigenvectors span a graph over the parameters, and they keep a
positive real part. When the stiffest slow eigenvalue meets a fast one they
merge into a complex pair of equal modulus and the manifold is gone. For
heavy-ball on a quadratic this is exactly
$h\lambda < (1 - \sqrt\beta)^2$ (the roots of $r^2 - (1 + \beta - h\lambda) r + \beta$
become complex); for Nesterov $h\lambda < ((1-\beta)/(1+\beta))^2$; for Adam it
involves the preconditioned curvature, which grows without bound as the gradient
vanishes. The measurement below makes no such case distinction: it linearises
the map itself at the given state.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Args, RealScalarLike, Y
from .._errors import StabilityWarning, warn_at_caller
from .._tree import array_leaves
from ._layout import state_layout
from ._maps import AbstractStepMap


#: Up to this many state entries the map's Jacobian is formed and fully diagonalised.
DENSE_LIMIT = 256
#: Step sizes (fractions of h) at which the gap is measured, to follow it from h = 0.
CONTINUATION_STEPS = 8
#: Power iterations for the stiffest parameter direction (large states).
POWER_ITERATIONS = 30
#: The slow and fast groups count as merged below this relative gap in modulus
#: (the eigenvalues of a nearly defective pair are accurate to about sqrt(eps)).
GAP_TOLERANCE = 1e-6


class Region(eqx.Module):
    r"""The measured separation of a map's slow and fast eigenvalues at one state and `h`.

    **Attributes:** `slow` (the smallest modulus among the $n_\theta$ largest),
    `fast` (the largest of the others), `graph` (the smallest singular value of
    the parameter part of an orthonormal basis of the slow eigenvectors: 0 when
    the slow subspace is not a graph over the parameters, e.g. when it is made
    of whole complex pairs of a few directions), `real` (the smallest real part
    of the slow eigenvalues: at or below 0 one step overshoots a slow direction,
    the analogue of $h\lambda \ge 1$ for gradient descent, and no real logarithm
    continues the one at $h = 0$), `method` (`"dense"` or `"krylov"`). The
    slow manifold exists when `slow > fast`, `graph > 0` and `real > 0` (beyond
    `GAP_TOLERANCE`).
    """

    slow: float
    fast: float
    graph: float
    real: float
    method: str = eqx.field(static=True)

    @property
    def exists(self) -> bool:
        separated = self.slow - self.fast > GAP_TOLERANCE * max(self.slow, 1e-300)
        return separated and self.graph > GAP_TOLERANCE and self.real > GAP_TOLERANCE

    def reason(self, map_name: str, h: float) -> str:
        if not np.isfinite(self.slow):
            why = (
                "its linearisation at the slow state over these parameters is not "
                "finite (e.g. a negative second moment under a square root)"
            )
        elif self.real <= GAP_TOLERANCE:
            why = (
                "a slow eigenvalue of its linearisation has real part "
                f"{self.real:.4g} <= 0 (one step overshoots that direction)"
            )
        elif self.graph > GAP_TOLERANCE:
            why = (
                f"the slow eigenvalues of its linearisation (smallest |mu| = {self.slow:.4g}) "
                "do not separate from the fast ones of its auxiliary state (largest "
                f"|mu| = {self.fast:.4g})"
            )
        else:
            why = (
                "the eigenvalues of its linearisation come in complex pairs that mix "
                "parameters and auxiliary state, so no slow subspace is a graph over "
                "the parameters"
            )
        return (
            f"{map_name} has no real slow manifold at h = {h:.4g} here: {why} (for heavy-ball "
            "this happens at h * lambda = (1 - sqrt(beta))^2, where the two roots turn "
            "complex), so the iterates follow no real flow of the parameters and the "
            "modified series is formal; use a smaller h"
        )


def _split(values: np.ndarray, vectors: np.ndarray, num_slow: int, restrict) -> tuple:
    """`(slow, fast, graph, real)` of `Region` from eigenpairs (vectors as columns)."""
    order = np.argsort(-np.abs(values), kind="stable")
    moduli = np.abs(values[order])
    fast = float(moduli[num_slow]) if moduli.size > num_slow else 0.0
    basis = np.linalg.qr(vectors[:, order[:num_slow]])[0]
    theta_part = np.stack([restrict(column) for column in basis.T], axis=1)
    graph = float(np.linalg.svd(theta_part, compute_uv=False)[-1])
    real = float(np.min(values[order[:num_slow]].real))
    return float(moduli[num_slow - 1]), fast, graph, real


def _num_entries(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in array_leaves(tree))


@eqx.filter_jit
def _jvp(step, h, args, layout, u, v):
    return jax.jvp(lambda w: layout.ravel(step(layout.unravel(w), h, args)), (u,), (v,))[1]


@eqx.filter_jit
def _jacobian(step, h, args, layout, u):
    return jax.jacfwd(lambda w: layout.ravel(step(layout.unravel(w), h, args)))(u)


def _arnoldi(product, start, dimension: int):
    """Eigenpairs of the operator on the Krylov space from `start` (Ritz vectors as columns)."""
    basis = [start / jnp.linalg.norm(start)]
    hessenberg = np.zeros((dimension, dimension))
    size = dimension
    for j in range(dimension):
        w = product(basis[j])
        for i, q in enumerate(basis):
            hessenberg[i, j] = float(q @ w)
            w = w - hessenberg[i, j] * q
        norm = float(jnp.linalg.norm(w))
        if j + 1 == dimension or norm < 1e-12 * max(1.0, abs(hessenberg[j, j])):
            size = j + 1
            break
        hessenberg[j + 1, j] = norm
        basis.append(w / norm)
    if not np.all(np.isfinite(hessenberg[:size, :size])):
        return np.full(size, np.nan), None
    values, vectors = np.linalg.eig(hessenberg[:size, :size])
    return values, np.stack([np.asarray(q) for q in basis], axis=1) @ vectors


def measure_region(step: AbstractStepMap, state: Y, h: RealScalarLike, args: Args) -> Region:
    r"""Linearise `step` at `state` and measure the gap between its slow and fast eigenvalues.

    The slow manifold that backward error analysis expands is the one that
    continues the $h = 0$ one, so the gap is measured at `CONTINUATION_STEPS`
    step sizes $s h$, $0 < s \le 1$, and the first where it fails is returned
    (else the one at $h$): a separation that closes and opens again (heavy-ball's
    roots are real again, and negative, beyond $h\lambda = (1 + \sqrt\beta)^2$)
    does not count. Up to `DENSE_LIMIT` entries, every eigenvalue of the
    Jacobian. Beyond, the stiffest parameter direction $v$ at $h$ (power
    iteration on the parameter block of $J - I$, Jacobian-vector products only),
    then the eigenvalues of $J$ on the Krylov space from $(v, 0)$ of dimension
    $1 + n_a / n_\theta$ (one copy of $v$ per auxiliary slot: exact for momentum
    on a quadratic, an approximation for other maps and losses).
    """
    # Step counters are held (burned in: bias corrections, beyond every power of h)
    # and a model's static leaves kept; the rest of the state moves.
    layout = state_layout(step, state, step.parameters(state), args)
    flat = layout.ravel(state)
    theta = layout.theta_index
    num_slow = theta.size
    # The parameter part of a state vector (complex allowed), and a parameter vector as a
    # state vector with zero auxiliary part: both are where the layout puts the parameters.
    restrict = lambda w: np.asarray(w)[theta]
    embed = lambda p: jnp.zeros_like(flat).at[theta].set(p)
    fractions = np.arange(1, CONTINUATION_STEPS + 1) / CONTINUATION_STEPS
    if flat.size <= DENSE_LIMIT:
        for fraction in fractions:
            size = jnp.asarray(fraction * float(h), flat.dtype)
            jacobian = np.asarray(_jacobian(step, size, args, layout, flat))
            if not np.all(np.isfinite(jacobian)):
                return Region(math.nan, math.nan, 0.0, math.nan, "dense")
            values, vectors = np.linalg.eig(jacobian)
            region = Region(*_split(values, vectors, num_slow, restrict), "dense")
            if not region.exists:
                break
        return region
    product = lambda v, size: _jvp(step, size, args, layout, flat, v)
    v = jnp.cos(1.0 + jnp.arange(num_slow, dtype=flat.dtype) * 0.7548776662466927)
    full = jnp.asarray(h, flat.dtype)
    for _ in range(POWER_ITERATIONS):
        v = product(embed(v), full)[theta] - v
        v = v / jnp.linalg.norm(v)
    dimension = 1 + math.ceil((flat.size - num_slow) / num_slow)
    for fraction in fractions:
        size = jnp.asarray(fraction * float(h), flat.dtype)
        values, vectors = _arnoldi(lambda w: product(w, size), embed(v), dimension)
        if not np.all(np.isfinite(values)):
            return Region(math.nan, math.nan, 0.0, math.nan, "krylov")
        region = Region(*_split(values, vectors, 1, restrict), "krylov")
        if not region.exists:
            break
    return region


def has_auxiliary_state(step: AbstractStepMap, state: Y) -> bool:
    """Whether `state` holds more than the parameters (momentum, moments)."""
    return _num_entries(state) > _num_entries(step.parameters(state))


def is_concrete(*trees) -> bool:
    """Whether no array leaf of `trees` is traced (checks need values)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in array_leaves(trees))


def region_problem(step: AbstractStepMap, state: Y, h: RealScalarLike, args: Args) -> str | None:
    """Why `step` has no slow manifold at `state` and `h`, or `None` where it has one.

    `None` too for maps without auxiliary state, at `h = 0` (the manifold's
    defining point), and under `jit` (values unknown).
    """
    if not is_concrete(state, h) or float(h) == 0 or not has_auxiliary_state(step, state):
        return None
    region = measure_region(step, state, h, args)
    return None if region.exists else region.reason(type(step).__name__, float(h))


#: The slow state's expansion $a_0 + h a_1 + \dots$ is taken as not yet valid once its
#: corrections reach this fraction of the leading term in an entry of a second moment.
SERIES_LIMIT = 1.0


def series_problem(
    step: AbstractStepMap, leading: Y, corrected: Y, h: RealScalarLike, order: int
) -> str | None:
    r"""Why the slow state's expansion in `h` is not valid at `h`, or `None` where it is.

    `leading` is the slow state at order 0 ($a_0$: for Adam $\mu = g$,
    $\nu = g^2$), `corrected` the one at order $p \ge 1$
    ($a_0 + h a_1 + \dots + h^p a_p$). The expansion is in $h$ against the decay
    rates $1 - D$ of the auxiliary state (for Adam's $\nu$, $h\,|d\log g_i^2/dt|$
    against $1 - b_2$), so it needs $h$ small against $1 - b_2$ entry by entry. It
    is checked on the auxiliary leaves that are non-negative at leading order
    (second moments, which the map takes a root of): where the corrections reach
    `SERIES_LIMIT` times $a_0$ the partial sum is no approximation of the slow
    manifold, and where they exceed it the moment is negative and its root is NaN.
    The corrections grow like $h$, so the expansion holds below about
    $h / \max_i |a_i - a_{0,i}| / a_{0,i}$, which the reason states.
    """
    worst, entries, negative, where = 0.0, 0, 0, ""
    arrays = zip(
        jtu.tree_leaves_with_path(eqx.filter(leading, eqx.is_inexact_array)),
        jtu.tree_leaves(eqx.filter(corrected, eqx.is_inexact_array)),
    )
    for (path, a0), a in arrays:
        a0, a = np.asarray(a0), np.asarray(a)
        if a0.size == 0 or np.any(a0 < 0) or np.array_equal(a0, a):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(a == a0, 0.0, np.abs(a - a0) / a0)
        bad = ratio >= SERIES_LIMIT
        if bad.any():
            entries += int(bad.sum())
            negative += int(np.sum(a < 0))
            where = where or f"`state{jtu.keystr(path)}` ({int(bad.sum())} of {a0.size} entries)"
        worst = max(worst, float(np.max(ratio)))
    if worst < SERIES_LIMIT:
        return None
    corrections = "h a_1" if order == 1 else f"h a_1 + ... + h^{order} a_{order}"
    holds = float(h) * SERIES_LIMIT / worst
    sign = f", and {negative} of them negative (e.g. Adam's nu < 0)" if negative else ""
    return (
        f"{type(step).__name__}'s slow manifold has no valid expansion at h = {float(h):.4g} "
        f"here: h is not small against the decay rates (1 - b) of its auxiliary state. Its "
        f"slow state's corrections {corrections} reach {SERIES_LIMIT:g} times the leading "
        f"term a_0 in {entries} entries of the second moments, first {where}{sign}, so the "
        f"series in h is not yet asymptotic; it holds below about h = {holds:.3g} at these "
        "parameters (use a smaller h, or a larger 1 - b)"
    )


def warn_outside_region(problem: str | None) -> None:
    """Warn (`StabilityWarning`) with `problem`, if any, at the user's line."""
    if problem is not None:
        warn_at_caller(problem + ".", StabilityWarning)
