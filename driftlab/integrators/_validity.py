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
from .._tree import array_leaves, tree_sub
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
    # The clock of a time-dependent map (eigenvalue 1) is slow, like the parameters.
    theta = np.concatenate([layout.theta_index, layout.clock_index])
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
    """Whether `state` holds more than the parameters and the clock (momentum, moments)."""
    clock = 0 if step.time(state) is None else 1
    return _num_entries(state) > _num_entries(step.parameters(state)) + clock


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


#: The slow state's expansion is taken as not yet valid where the map's update responds to its
#: corrections nonlinearly by this fraction of the update itself (the second difference below;
#: under a square root, at corrections of about 0.5 to 1 times the leading term).
SERIES_LIMIT = 0.1


#: An update counts only above this many ulps of the parameters.
ROUNDOFF_RESOLUTION = 1e4
#: Bisection steps for the step size below which the expansion holds (a factor 2^-30).
BISECTION_STEPS = 30


@eqx.filter_jit
def _updates_along(step, leading, corrected, h, args):
    """The map's parameter update from `leading + s (corrected - leading)`, s = 0, 1/2, 1."""

    def update(s):
        arrays = jtu.tree_map(
            lambda a0, a: a0 + s * (a - a0) if eqx.is_inexact_array(a0) else a0,
            eqx.filter(leading, eqx.is_array),
            eqx.filter(corrected, eqx.is_array),
        )
        state = eqx.combine(arrays, eqx.filter(leading, eqx.is_array, inverse=True))
        moved = tree_sub(step.parameters(step(state, h, args)), step.parameters(state))
        return jnp.concatenate([jnp.ravel(x) for x in array_leaves(moved)])

    return update(0.0), update(0.5), update(1.0)


def series_problem(
    step: AbstractStepMap, leading: Y, corrected: Y, h: RealScalarLike, args: Args, order: int
) -> str | None:
    r"""Why the slow state's expansion in `h` is not valid at `h`, or `None` where it is.

    `leading` is the slow state at order 0 ($a_0$: for Adam $\mu = g$,
    $\nu = g^2$), `corrected` the one at order $p \ge 1$
    ($a_0 + h a_1 + \dots + h^p a_p$). The corrections are a series in $h$ against
    the decay rates $1 - D$ of the auxiliary state: for Adam,
    $\nu_1 = -\frac{d(g^2)/dt}{1 - b_2}$, so $h$ must be small against $1 - b_2$
    relative to how fast each squared gradient entry changes. What matters is
    how the map uses them: its update $u(s) = \Phi_h(a_0 + s\,\delta) - \theta$
    along the corrections $\delta$ must stay close to linear in $s$, entry by
    entry, for the expansion (which linearises the map about $a_0$ order by order)
    to be asymptotic. The second difference relative to the update,
    $\rho_i = |u_i(1) - 2u_i(\tfrac12) + u_i(0)| / |u_i(0)|$, is 0 for a map
    linear in its state (heavy-ball, Nesterov) and grows like $|\delta_i| / \nu_i$ under
    a square root $\sqrt{\nu_i}$ (without $\epsilon$ inside it); a negative $\nu_i$ makes
    it NaN. The problem is reported where $\max_i \rho_i \ge$ `SERIES_LIMIT` (updates
    below $10^{-3}$ of the largest, or below `ROUNDOFF_RESOLUTION` ulps of the
    parameters, are measured against that). The
    corrections are linear in $h$ at order 1, so the $h$ below which the
    expansion holds is found by bisection on their scale (scaled linearly at
    higher orders too), and stated.
    """
    ratio, finite = _response(step, leading, corrected, h, args, 1.0)
    worst = float(np.max(ratio[finite], initial=0.0))
    nonfinite = int(np.sum(~finite))
    if worst < SERIES_LIMIT and not nonfinite:
        return None
    corrections = "h a_1" if order == 1 else f"h a_1 + ... + h^{order} a_{order}"
    response = (
        f"nonlinearly in {int(np.sum(ratio >= SERIES_LIMIT))} of {ratio.size} parameter "
        f"entries (second difference up to {worst:.3g} of the update, limit {SERIES_LIMIT:g}"
    )
    if nonfinite:
        response += f"; non-finite in {nonfinite}"
    response += ")"
    negative = _negative_moments(leading, corrected)
    if negative:
        response += f": its second moment is negative in {negative}"
    # The first-order corrections scale with h: bisect on the scale for the largest valid h.
    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        scale = 0.5 * (low + high)
        ratio, finite = _response(step, leading, corrected, h, args, scale)
        if finite.all() and np.max(ratio, initial=0.0) < SERIES_LIMIT:
            low = scale
        else:
            high = scale
    exact = " (its corrections scaled linearly in h)" if order > 1 else ""
    holds = f"it holds below about h = {float(h) * low:.3g}{exact}"
    return (
        f"{type(step).__name__}'s slow manifold has no valid expansion at h = {float(h):.4g} "
        "here: h is not small against the decay rates (1 - b) of its auxiliary state. The "
        f"map's update responds to the slow state's corrections {corrections} {response}, "
        f"so the series in h is not yet asymptotic; {holds} at these parameters (use a "
        "smaller h, or a larger 1 - b)"
    )


def _response(step, leading, corrected, h, args, scale):
    """Second differences of the update along the corrections scaled to `scale * h`, relative.

    Returns the ratio per parameter entry and where the update is finite.
    """
    if scale != 1.0:
        corrected = jtu.tree_map(
            lambda a0, a: a0 + scale * (a - a0) if eqx.is_inexact_array(a0) else a,
            leading,
            corrected,
        )
    updates = _updates_along(step, leading, corrected, jnp.asarray(scale * float(h)), args)
    start, middle, end = (np.asarray(u) for u in updates)
    finite = np.isfinite(end) & np.isfinite(middle)
    # Updates are differences of parameters: below this their digits are round-off.
    size = max(
        float(np.max(np.abs(leaf), initial=0.0)) for leaf in array_leaves(step.parameters(leading))
    )
    noise = ROUNDOFF_RESOLUTION * np.finfo(np.float64).eps * size
    with np.errstate(invalid="ignore", divide="ignore"):
        floor = max(1e-3 * np.max(np.abs(start), initial=0.0), noise)
        ratio = np.abs(end - 2 * middle + start) / np.maximum(np.abs(start), floor)
    return np.where(finite, np.nan_to_num(ratio, nan=0.0), np.inf), finite


def _negative_moments(leading: Y, corrected: Y) -> str:
    """Where `corrected` is negative in an auxiliary leaf that is non-negative in `leading`."""
    found = []
    pairs = zip(
        jtu.tree_leaves_with_path(eqx.filter(leading, eqx.is_inexact_array)),
        jtu.tree_leaves(eqx.filter(corrected, eqx.is_inexact_array)),
    )
    for (path, a0), a in pairs:
        a0, a = np.asarray(a0), np.asarray(a)
        if a0.size and np.all(a0 >= 0) and np.any(a < 0) and not np.array_equal(a0, a):
            found.append((f"`state{jtu.keystr(path)}`", int(np.sum(a < 0)), a0.size))
    if not found:
        return ""
    total = sum(n for _, n, _ in found)
    first = ", ".join(f"{name}: {n} of {size}" for name, n, size in found[:2])
    return f"{total} entries (e.g. Adam's nu < 0; {first})"


def warn_outside_region(problem: str | None) -> None:
    """Warn (`StabilityWarning`) with `problem`, if any, at the user's line."""
    if problem is not None:
        warn_at_caller(problem + ".", StabilityWarning)
