r"""Taylor-mode expansions in the step size shared by `ModifiedFlow` and `CorrectedField`.

Iterates of a one-step map as Taylor series in $h$ (`jax.experimental.jet`, with
rules for `scan` and `scatter`, which it lacks), the weights of the logarithm of
the shift operator, and the slow manifold of maps with auxiliary state.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import jet
from jax.extend import core as jex_core

from .._errors import InputError
from .._tree import tree_add, tree_axpy, tree_scale, zeros_like
from ..integrators._layout import Layout


#: Newton iterations for the auxiliary state's fixed point at `h = 0`.
FIXED_POINT_ITERATIONS = 6
#: `I - D` counts as singular (resonance) when some `|1 - d_i|` is below this.
RESONANCE_TOLERANCE = 1e-6
#: Relative tolerance of the checks that the map is the identity in the parameters at
#: `h = 0`, that its auxiliary Jacobian is diagonal, and that the fixed point converged.
CONSISTENCY_TOLERANCE = 1e-8


def _jet_scan(primals_in, series_in, *, jaxpr, num_consts, num_carry, length, reverse, **params):
    """Taylor-mode rule for `lax.scan` (jet has none): unroll and propagate the series."""
    del params
    body = jex_core.jaxpr_as_fun(jaxpr)
    carry_end = num_consts + num_carry
    consts, carry, xs = (
        primals_in[:num_consts],
        primals_in[num_consts:carry_end],
        primals_in[carry_end:],
    )
    consts_series, carry_series = series_in[:num_consts], series_in[num_consts:carry_end]
    xs_series = series_in[carry_end:]
    ys, ys_series = [], []
    for i in reversed(range(length)) if reverse else range(length):
        x = [leaf[i] for leaf in xs]
        x_series = [[term[i] for term in terms] for terms in xs_series]
        out, out_series = jet.jet(
            body,
            (*consts, *carry, *x),
            (*consts_series, *carry_series, *x_series),
            factorial_scaled=False,  # the rules' own convention: Taylor coefficients
        )
        carry, carry_series = out[:num_carry], out_series[:num_carry]
        ys.append(out[num_carry:])
        ys_series.append(out_series[num_carry:])
    if reverse:
        ys, ys_series = ys[::-1], ys_series[::-1]
    order = len(series_in[0])
    stacked = [jnp.stack(column) for column in zip(*ys)] if ys and ys[0] else []
    stacked_series = [
        [jnp.stack([per_step[k][m] for per_step in ys_series]) for m in range(order)]
        for k in range(len(stacked))
    ]
    return [*carry, *stacked], [*carry_series, *stacked_series]


# `jax.experimental.jet` has no rule for `scan`, which `SGDEpoch` (and any map that loops
# over batches with `lax.scan`) uses; this one unrolls the loop, which is exact.
jet.jet_rules.setdefault(jax.lax.scan_p, _jet_scan)


_POW_RULE = jet.jet_rules[jax.lax.pow_p]


def _jet_pow(primals_in, series_in):
    r"""Taylor-mode rule for `x ** n` that also takes an integer `n` (a step counter).

    jet's own rule multiplies `n` by `log(x)`, which fails for integer `n`; an
    integer has no series, so $v = u^n$ follows Miller's recurrence
    $v_k = \sum_{j=1}^{k} ((n+1) j - k)\, u_j v_{k-j} / (k u_0)$, and $v_k = 0$
    where $u_0 = 0$ (exact for $n \ge k$: counters sit at `BURNED_IN_COUNT`).
    """
    x, n = primals_in
    if not jnp.issubdtype(jnp.result_type(n), jnp.integer):
        return _POW_RULE(primals_in, series_in)
    r = n.astype(jnp.result_type(x))
    u, v = [x, *series_in[0]], [jax.lax.pow(x, n)]
    nonzero = x != 0
    safe = jnp.where(nonzero, x, 1)
    for k in range(1, len(u)):
        total = sum(((r + 1) * j - k) * u[j] * v[k - j] for j in range(1, k + 1))
        v.append(jnp.where(nonzero, total / (k * safe), 0))
    return v[0], v[1:]


# optax's bias correction raises a decay rate to its integer step count inside a `jit`,
# whose jet rule gives the count a series of integer zeros.
jet.jet_rules[jax.lax.pow_p] = _jet_pow


#: What each consistency flag of an expansion means (raised as `InputError`).
PROBLEMS = (
    "`step_map`: no slow manifold. The Jacobian D of its auxiliary state at h = 0 has "
    "an eigenvalue 1: an entry does not decay (an accumulator, such as adagrad's sum of "
    "squared gradients), so I - D is singular and the state is not slaved to the "
    "parameters. Step counters (integer leaves, or floats updated as `count + 1`) are "
    "carried instead; other non-decaying state has no modified flow.",
    "`step_map`: the Jacobian of its auxiliary state at h = 0 is not diagonal "
    "(each auxiliary entry must decay on its own, as momentum and Adam/RMSProp "
    "moments do); the slow manifold needs a diagonal one.",
    "`step_map`: the auxiliary state has no fixed point at h = 0 that Newton's method "
    "finds from `step_map.init(params)`.",
    "`step_map` at h = 0 must leave the parameters unchanged (and its auxiliary "
    "state at its fixed point): backward error analysis needs a map that tends "
    "to the identity as h -> 0.",
)


def checked(x, flags):
    """`x`, after raising `InputError` for each concretely set flag (`eqx.error_if` under jit)."""
    for bad, message in zip(flags, PROBLEMS):
        if isinstance(bad, jax.core.Tracer) or isinstance(x, jax.core.Tracer):
            x = eqx.error_if(x, bad, message)
        elif bool(bad):
            raise InputError(message)
    return x


def _taylor_step(map_flat, u, coefficients, order: int):
    r"""$\Phi_h(u(h))$ in Taylor coefficients: $u(h) = u + \sum_{m=1}^{K} c_m h^m$, at $h = 0$.

    `coefficients=None` means a constant `u`: only the map's own `h` is expanded.
    `jet` is called with `factorial_scaled=False`, so its series are Taylor
    coefficients (not derivatives) in and out.
    """
    zero = jnp.zeros((), u.dtype)
    h_series = [jnp.ones((), u.dtype)] + [zero] * (order - 1)
    if coefficients is None:
        return jet.jet(lambda h: map_flat(u, h), (zero,), (h_series,), factorial_scaled=False)
    return jet.jet(map_flat, (u, zero), (list(coefficients), h_series), factorial_scaled=False)


def _accumulate(advance, state, coefficients, weights: np.ndarray):
    r"""$\sum_{j \ge 1} w_j c_{j,m}$ given iterate 1's coefficients and a rule to advance them.

    `advance(state, coefficients)` returns iterate $j + 1$'s `(state, coefficients)`
    from iterate $j$'s. Iterates $2, 3, \ldots$ run in a `lax.scan` (one compiled
    step for all of them), with the weighted sum accumulated in the carry (memory:
    `order` state vectors).
    """
    sums = [tree_scale(weights[0], c) for c in coefficients]

    def body(carry, weight):
        state, coefficients, sums = carry
        state, coefficients = advance(state, coefficients)
        sums = [tree_axpy(weight, c, s) for s, c in zip(sums, coefficients)]
        return (state, coefficients, sums), None

    if len(weights) > 1:
        rest = jnp.asarray(weights[1:], dtype=jtu.tree_leaves(coefficients[0])[0].dtype)
        sums = jax.lax.scan(body, (state, coefficients, sums), rest)[0][2]
    return sums


def weighted_iterates(map_flat, u, coefficients, order: int, weights: np.ndarray):
    r"""$\sum_{j \ge 1} w_j c_{j,m}$ over the Taylor coefficients $c_{j,m}$ of $\Phi_h^j(u(h))$.

    Iterate $j$ is fed iterate $j - 1$'s series, so each costs one jet.

    **Returns:** the primal of the first iterate ($\Phi_0(u(0))$) and the sums.
    """
    first, coefficients = _taylor_step(map_flat, u, coefficients, order)
    advance = lambda u, coefficients: _taylor_step(map_flat, u, coefficients, order)
    return first, _accumulate(advance, first, coefficients, weights)


def euler_weighted_iterates(field, u, order: int, weights: np.ndarray):
    r"""`weighted_iterates` for an explicit Euler map $\Phi_h(y) = y + h\,G(y)$.

    With $y_j(h) = u + \sum_{k=1}^{K} c_{j,k} h^k$ ($K$ = `order`), the recursion is
    $c_{j+1,k} = c_{j,k} + [G(y_j)]_{k-1}$, with $[\cdot]_m$ the $h^m$ Taylor
    coefficient: a jet of $G$ of order $K - 1$, one less than the map's own. At
    $K = 2$ that jet is linear in $c_{j,1}$, so one linearisation of $G$ at $u$
    serves every iterate; at $K = 3$ four products do (`_euler_order_3`).

    `u` and the values of `field` are PyTrees of arrays of one structure (`None` at a
    model's static leaves): the products run on the parameters' own arrays. On one
    ravelled vector, XLA's CPU backend ran the same products at 1e6 parameters 2x slower
    (every weight matrix a slice of the vector; `benchmarks/scale.py`).
    """
    if order == 3:
        return _euler_order_3(field, u, weights)
    g0, linear = jax.linearize(field, u)

    def advance(state, coefficients):
        if order == 1:
            higher = []
        elif order == 2:
            higher = [linear(coefficients[0])]
        else:
            higher = _tree_jet(field, u, coefficients[:-1])
        return state, [
            tree_add(coefficients[0], g0),
            *(tree_add(c, g) for c, g in zip(coefficients[1:], higher)),
        ]

    coefficients = [g0] + [zeros_like(g0)] * (order - 1)
    return _accumulate(advance, None, coefficients, weights)


def _tree_jet(fn, u, terms):
    """`jet.jet` of `fn` at the PyTree `u` with series `terms` (PyTrees like `u`); jet
    itself takes arrays only, so each array leaf is one of its arguments.

    **Returns:** the output's Taylor coefficients, one PyTree per term.
    """
    leaves, treedef = jtu.tree_flatten(u)
    series = [
        [term_leaves[i] for term_leaves in map(treedef.flatten_up_to, terms)]
        for i in range(len(leaves))
    ]
    out, out_series = jet.jet(
        lambda *x: fn(jtu.tree_unflatten(treedef, x)), leaves, series, factorial_scaled=False
    )
    out_def = jtu.tree_structure(out)
    per_leaf = out_def.flatten_up_to(out_series)
    return [jtu.tree_unflatten(out_def, [s[k] for s in per_leaf]) for k in range(len(terms))]


def _euler_order_3(field, u, weights: np.ndarray):
    r"""`euler_weighted_iterates` at $K = 3$ in closed form, from four products.

    With $g = G(u)$, $J = G'(u)$ and $c_{0,k} = 0$, the recursion gives
    $c_{j,1} = j g$, $c_{j,2} = \binom j2 Jg$ and, since
    $[G(y_j)]_2 = J c_{j,2} + \frac12 G''(c_{j,1}, c_{j,1})$,
    $c_{j,3} = \binom j3 J^2 g + \frac12 \sum_{i<j} i^2\, G''(g, g)$: every iterate is
    a combination of $g$, $Jg$, $J^2g$ and $G''(g, g)$ with weights polynomial in $j$.
    The jets of order 2 per iterate (each re-expanding $G$ at the same $u$) cost about
    three times as much; the sums agree to round-off.
    """
    j = np.arange(1, len(weights) + 1, dtype=np.float64)
    g, linear = jax.linearize(field, u)
    # Forward over forward along g: the inner tangent is Jg, the outer one G''(g, g). Its
    # primal and its duplicate tangent are the linearisation's; XLA computes them once.
    jg, second = jax.jvp(lambda y: jax.jvp(field, (y,), (g,))[1], (u,), (g,))
    squares = (j - 1) * j * (2 * j - 1) / 6
    return [
        tree_scale(weights @ j, g),
        tree_scale(weights @ (j * (j - 1) / 2), jg),
        tree_add(
            tree_scale(weights @ (j * (j - 1) * (j - 2) / 6), linear(jg)),
            tree_scale(weights @ squares / 2, second),
        ),
    ]


def difference_weights(n: int) -> np.ndarray:
    r"""$\Delta^n y_0 = \sum_{j=0}^n (-1)^{n-j}\binom{n}{j} y_j$: the weights."""
    return np.array([(-1) ** (n - j) * math.comb(n, j) for j in range(n + 1)], dtype=np.float64)


def log_weights(n: int) -> np.ndarray:
    r"""Weights $w_j$ with $\sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\Delta^k y_0 = \sum_j w_j y_j$."""
    weights = np.zeros(n + 1)
    for k in range(1, n + 1):
        weights[: k + 1] += (-1) ** (k + 1) / k * difference_weights(k)
    return weights


def slow_manifold(map_flat, u0, layout: Layout, order: int):
    r"""The slow state over `params` as a series $a_0 + a_1 h + \dots + a_p h^p$.

    $a_0$ is the fixed point of the auxiliary map at $h = 0$ (Newton). The
    invariant curve $Z(s)$, $Z(s+1) = \Phi_h(Z(s))$, has $Z_k = O(h^k)$, so its
    integer samples, the iterates, satisfy $\Delta^{i+1} y_0 = O(h^{i+1})$. The
    $h^i$ coefficient of the auxiliary part of $\Delta^{i+1} y_0$ is linear in
    $a_i$ with matrix $(D - I)^{i+1}$ (D: the auxiliary Jacobian at $h = 0$) plus
    terms in $a_0..a_{i-1}$, so one pass of $i + 1$ iterates at Taylor order $i$
    gives $a_i$ exactly.

    **Returns:** `(u0, series, flags)`: the state at the fixed point, the full-size
    coefficient vectors $a_1..a_p$ (zero on the parameters), and the first three
    consistency flags of `PROBLEMS`.
    """
    aux_index = layout.aux_index
    zero = jnp.zeros((), u0.dtype)

    def aux_map(a):
        return map_flat(u0.at[aux_index].set(a), zero)[aux_index]

    a = u0[aux_index]
    ones = jnp.ones_like(a)
    for _ in range(FIXED_POINT_ITERATIONS):
        value, d = jax.jvp(aux_map, (a,), (ones,))
        a = a - (a - value) / (1 - d)
    value, d = jax.jvp(aux_map, (a,), (ones,))
    probe = jnp.cos(1.0 + jnp.arange(a.size, dtype=a.dtype) * 0.7548776662466927)
    off_diagonal = jnp.linalg.norm(jax.jvp(aux_map, (a,), (probe,))[1] - d * probe)
    scale = 1 + jnp.max(jnp.abs(d))
    flags = [
        jnp.min(jnp.abs(1 - d)) < RESONANCE_TOLERANCE,
        off_diagonal > CONSISTENCY_TOLERANCE * scale * jnp.linalg.norm(probe),
        jnp.linalg.norm(a - value) > CONSISTENCY_TOLERANCE * (1 + jnp.linalg.norm(a)),
    ]
    u0 = u0.at[aux_index].set(a)
    series = []
    for i in range(1, order + 1):
        weights = difference_weights(i + 1)[1:]
        _, sums = weighted_iterates(map_flat, u0, [*series, jnp.zeros_like(u0)], i, weights)
        residual = sums[-1][aux_index]
        series.append(jnp.zeros_like(u0).at[aux_index].set(-residual / (d - 1) ** (i + 1)))
    return u0, series, flags


def _jet_scatter(primals_in, series_in, **params):
    """Taylor-mode rule for `lax.scatter` (`x.at[i].set(v)`), linear in `(x, v)`; jet has none."""
    operand, indices, updates = primals_in
    out = jax.lax.scatter_p.bind(operand, indices, updates, **params)
    series = [
        jax.lax.scatter_p.bind(x, indices, v, **params) for x, v in zip(series_in[0], series_in[2])
    ]
    return out, series


# The slow manifold of a momentum map sets its auxiliary state with `.at[].set`; nested in the
# Taylor expansion of a driven map (the recursion below) that scatter is expanded too.
jet.jet_rules.setdefault(jax.lax.scatter_p, _jet_scatter)
