"""Hypothesis strategies: losses, games, batches, step sizes and states where BEA is meaningful."""

import functools as ft
import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Args
from .._errors import InputError
from ..analysis import hessian_eigenpairs
from ..problems import (
    AbstractProblem,
    bilinear_game_losses,
    mlp_loss,
    Problem,
    quadratic_loss,
    QuadraticProblem,
    random_spectrum_matrix,
)
from ..problems._digits import _ACTIVATIONS


#: Gradient descent's stability edge in units of `h * lambda`: beyond it, iterates diverge.
GD_STABILITY_EDGE = 2.0
#: One loss per smooth activation, built once so that jitted code sees the same callable.
_MLP_LOSSES = {name: ft.partial(mlp_loss, activation=name) for name in _ACTIVATIONS}
#: Player one's and player two's losses of every game these strategies draw.
GAME_LOSSES = bilinear_game_losses()
_SEEDS = st.integers(0, 2**32 - 1)


def _checked_range(value, name: str, *, low: float, integer: bool = False) -> tuple:
    """`value` (a number or an inclusive `(min, max)` pair) as a pair, checked against `low`."""
    pair = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise InputError(f"`{name}` must be a number or a pair (min, max) with min <= max.")
    if pair[0] < low:
        raise InputError(f"`{name}` must be at least {low:g}, got {pair}.")
    if integer and not all(isinstance(v, int) for v in pair):
        raise InputError(f"`{name}` must hold integers, got {pair}.")
    return pair


def _unit_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    y = rng.standard_normal(dim)
    return y / np.linalg.norm(y)


def _spectrum(rng, dim, condition, lambda_max, negative) -> np.ndarray:
    """`dim` eigenvalues of magnitude in `[lambda_max / condition, lambda_max]`, both attained."""
    magnitudes = lambda_max / condition ** rng.uniform(0.0, 1.0, dim)
    magnitudes[0], magnitudes[-1] = lambda_max, lambda_max / condition
    signs = rng.choice([-1.0, 1.0], dim) if negative else np.ones(dim)
    return np.sort(signs * magnitudes)


@st.composite
def _quadratic(draw, dims, condition, lambda_max, negative):
    dim = draw(st.integers(*dims))
    kappa = draw(st.floats(*condition)) if dim > 1 else 1.0
    seed = draw(_SEEDS)
    rng = np.random.default_rng(seed)
    a = jnp.asarray(
        random_spectrum_matrix(_spectrum(rng, dim, kappa, lambda_max, negative), seed=seed)
    )
    return QuadraticProblem(
        name="quadratic",
        loss=quadratic_loss,
        params=jnp.asarray(_unit_vector(rng, dim)),
        data={"A": a, "b": jnp.zeros(dim)},
        A=a,
    )


def quadratic_problems(
    *,
    dims: int | tuple[int, int] = (2, 4),
    condition: float | tuple[float, float] = (1.0, 10.0),
    lambda_max: float = 1.0,
    negative: bool = False,
) -> st.SearchStrategy[QuadraticProblem]:
    r"""Quadratic losses $L(y) = \frac12 y^\top A y$ with a controlled spectrum.

    The eigenvalues of $A$ have magnitudes in $[\lambda_{max}/\kappa, \lambda_{max}]$
    (both ends attained, the rest log-uniform), so the condition number is exactly
    the drawn $\kappa$ and the spectral radius is exactly `lambda_max`. $A$ is
    rotated by a seeded random orthogonal matrix; the initial parameters are a
    seeded unit vector.

    **Arguments:**

    - `dims`: the dimension, or an inclusive range `(min, max)`.
    - `condition`: the condition number $\kappa \ge 1$, or a range.
    - `lambda_max`: the spectral radius of $A$ (positive).
    - `negative`: give each eigenvalue a random sign (saddles and maxima), for
      flows that must hold on non-convex losses.

    **Returns:** a strategy of `driftlab.problems.QuadraticProblem`, whose `A` is
    the exact Hessian, for closed-form checks.

    **Raises:** `driftlab.InputError` for a dimension below 1, a condition
    number below 1 or a non-positive `lambda_max`.
    """
    dims = _checked_range(dims, "dims", low=1, integer=True)
    condition = _checked_range(condition, "condition", low=1.0)
    if not lambda_max > 0:
        raise InputError(f"`lambda_max` must be positive, got {lambda_max}.")
    return _quadratic(dims, condition, float(lambda_max), bool(negative))


@st.composite
def _mlp(draw, num_inputs, hidden, num_classes, num_samples, activation):
    width = draw(st.integers(*hidden))
    seed = draw(_SEEDS)
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((num_samples, num_inputs))
    labels = np.eye(num_classes)[rng.integers(0, num_classes, num_samples)]
    params = {
        "W1": jnp.asarray(rng.standard_normal((num_inputs, width)) / np.sqrt(num_inputs)),
        "b1": jnp.asarray(0.1 * rng.standard_normal(width)),
        "W2": jnp.asarray(rng.standard_normal((width, num_classes)) / np.sqrt(width)),
        "b2": jnp.asarray(0.1 * rng.standard_normal(num_classes)),
    }
    data = {"x": jnp.asarray(inputs), "y": jnp.asarray(labels)}
    return Problem(name="mlp", loss=_MLP_LOSSES[activation], params=params, data=data)


def mlp_problems(
    *,
    num_inputs: int = 3,
    hidden: int | tuple[int, int] = (2, 5),
    num_classes: int = 2,
    num_samples: int = 12,
    activation: str = "tanh",
) -> st.SearchStrategy[Problem]:
    r"""Small one-hidden-layer MLP classifiers on seeded Gaussian data.

    The loss is `driftlab.problems.mlp_loss` (mean softmax cross-entropy of
    $\sigma(xW_1 + b_1)W_2 + b_2$), smooth to every order; with the defaults a
    problem has 17 to 32 parameters, so each example costs milliseconds. Inputs
    are standard normal, labels uniform, weights LeCun-normal, all from one
    drawn seed. `params` is the dict `{"W1", "b1", "W2", "b2"}` (a PyTree), `data`
    the full batch `{"x", "y"}`; `problem.batches(m, seed=...)` splits it.

    **Arguments:**

    - `num_inputs`, `num_classes`, `num_samples`: the data's shape.
    - `hidden`: the hidden width, or an inclusive range.
    - `activation`: a smooth activation, `"tanh"` or `"softplus"`.

    **Raises:** `driftlab.InputError` for a non-smooth activation (`"relu"`: its
    Hessian is zero almost everywhere and its third derivative does not exist, so
    modified flows, which differentiate the loss, are meaningless), an unknown
    one, or a size below 1.
    """
    if activation not in _ACTIVATIONS:
        why = (
            " It is not smooth: backward error analysis differentiates the loss two or "
            "more times, and a piecewise-linear network's higher derivatives vanish or "
            "do not exist."
            if activation in ("relu", "leaky_relu", "abs", "hard_tanh", "relu6")
            else ""
        )
        raise InputError(
            f"`activation` {activation!r} is not supported.{why} Use one of {sorted(_ACTIVATIONS)}."
        )
    hidden = _checked_range(hidden, "hidden", low=1, integer=True)
    for name, value in [
        ("num_inputs", num_inputs),
        ("num_classes", num_classes),
        ("num_samples", num_samples),
    ]:
        _checked_range(value, name, low=1, integer=True)
    return _mlp(num_inputs, hidden, num_classes, num_samples, activation)


@st.composite
def _game(draw, dims, condition, quadratic):
    dim = draw(st.integers(*dims))
    seed = draw(_SEEDS)
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    if quadratic:
        kappa = draw(st.floats(*condition)) if dim > 1 else 1.0
        p, q = (
            random_spectrum_matrix(_spectrum(rng, dim, kappa, 1.0, False), seed=seed + k)
            for k in (1, 2)
        )
    else:
        p = q = np.zeros((dim, dim))
    data = {"B": jnp.asarray(b), "P": jnp.asarray(p), "Q": jnp.asarray(q)}
    params = (jnp.asarray(_unit_vector(rng, dim)), jnp.asarray(_unit_vector(rng, dim)))
    return Problem(name="game", loss=GAME_LOSSES[0], params=params, data=data)


def bilinear_games(*, dims: int | tuple[int, int] = (1, 3)) -> st.SearchStrategy[Problem]:
    r"""Zero-sum bilinear games $\min_\phi \max_\theta \phi^\top B \theta$, $B$ seeded Gaussian.

    The losses are `driftlab.testing.GAME_LOSSES = (loss_phi, loss_theta)`, in the
    form of `driftlab.problems.bilinear_game_losses` with $P = Q = 0$; the problem's
    `loss` is player one's. `params` is the pair `(phi, theta)` of seeded unit
    vectors, `data` is `{"B", "P", "Q"}`. Simultaneous GD spirals out on these
    games and alternating GD does not (Rosca et al. 2021).

    **Raises:** `driftlab.InputError` for a dimension below 1.
    """
    return _game(_checked_range(dims, "dims", low=1, integer=True), None, False)


def quadratic_games(
    *,
    dims: int | tuple[int, int] = (1, 3),
    condition: float | tuple[float, float] = (1.0, 5.0),
) -> st.SearchStrategy[Problem]:
    r"""Zero-sum quadratic games, $L_1 = \phi^\top B\theta + \frac12\phi^\top P\phi
    - \frac12\theta^\top Q\theta = -L_2$.

    As `bilinear_games`, with $P$ and $Q$ symmetric positive definite, spectral
    radius 1 and condition number drawn from `condition`; $L_2 = -L_1$.

    **Raises:** `driftlab.InputError` for a dimension or condition number below 1.
    """
    dims = _checked_range(dims, "dims", low=1, integer=True)
    return _game(dims, _checked_range(condition, "condition", low=1.0), True)


def curvature(problem) -> float:
    r"""The spectral radius $\max_i|\lambda_i|$ of the loss's Hessian at the problem's parameters.

    The number that step-size regions are stated in ($h\lambda_{max} < 1$): exact
    for a `QuadraticProblem`, dense or Lanczos (`driftlab.hessian_eigenpairs`) for
    any other `driftlab.problems.AbstractProblem`; a number passes through.
    """
    if isinstance(problem, QuadraticProblem):
        return float(np.max(np.abs(np.linalg.eigvalsh(np.asarray(problem.A)))))
    if isinstance(problem, AbstractProblem):
        spectrum = hessian_eigenpairs(problem.loss, problem.params, problem.data, which="LM")
        return float(np.max(np.abs(spectrum.eigenvalues)))
    try:
        return float(problem)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"expected a problem or a curvature (a positive number), got {type(problem).__name__}."
        ) from error


def _checked_region(problem, h_lambda, edge) -> tuple[float, float, float]:
    lam = curvature(problem)
    if not (math.isfinite(lam) and lam > 0):
        raise InputError(
            f"the curvature is {lam:g}; a region `h * lambda` in {h_lambda} says nothing "
            "about h on a loss with no curvature. Pass a problem with a non-zero Hessian."
        )
    low, high = (float(v) for v in h_lambda)
    if not 0 <= low < high:
        raise InputError(
            f"the region {low:g} < h * lambda_max < {high:g} is empty; pass `h_lambda` "
            "as (low, high) with 0 <= low < high."
        )
    if high > edge:
        raise InputError(
            f"the region reaches h * lambda_max = {high:g}, beyond the stability edge "
            f"{edge:g}: there the iterates oscillate or diverge and the backward-error "
            "series does not converge, so no flow follows the map. Lower the upper bound "
            "of `h_lambda` (or state your map's edge with `edge=`)."
        )
    return lam, low, high


def step_sizes(
    problem,
    *,
    h_lambda: tuple[float, float] = (0.0, 1.0),
    edge: float = GD_STABILITY_EDGE,
) -> st.SearchStrategy[float]:
    r"""Step sizes $h$ with $h\lambda_{max}$ strictly inside the region `h_lambda`.

    $\lambda_{max}$ is `curvature(problem)`, the Hessian's spectral radius at the
    problem's parameters (or a number you pass instead of a problem). For
    example `step_sizes(problem, h_lambda=(0, 1))` draws $0 < h < 1/\lambda_{max}$,
    where GD is monotone and its exact modified field $\frac1h\log(I - hA)$ is real.

    **Arguments:**

    - `problem`: a `driftlab.problems.AbstractProblem`, or $\lambda_{max}$ itself.
    - `h_lambda`: the region `(low, high)` of $h\lambda_{max}$, open at both ends.
    - `edge`: the map's stability edge in units of $h\lambda_{max}$ (2 for GD;
      for heavy-ball's slow manifold, $(1 - \sqrt\beta)^2$).

    **Raises:** `driftlab.InputError` when the region is empty, reaches beyond
    `edge`, or the curvature is zero.
    """
    lam, low, high = _checked_region(problem, h_lambda, edge)
    return st.floats(low / lam, high / lam, exclude_min=True, exclude_max=True)


def step_size_grids(
    problem,
    *,
    h_lambda: tuple[float, float] = (1e-3, 0.5),
    num: int = 4,
    ratio: float = 2.0,
    edge: float = GD_STABILITY_EDGE,
) -> st.SearchStrategy[tuple[float, ...]]:
    r"""Geometric grids of `num` step sizes, `ratio` apart, all inside the region `h_lambda`.

    The grid an order measurement (`assert_order`) fits its slope on: the
    largest $h$ is drawn so that every point keeps $h\lambda_{max}$ inside
    `h_lambda`.

    **Raises:** `driftlab.InputError` when the region is too narrow to hold
    such a grid (or is empty or reaches beyond `edge`), or for `num < 3`,
    `ratio <= 1`.
    """
    lam, low, high = _checked_region(problem, h_lambda, edge)
    if not (isinstance(num, int) and num >= 3) or not ratio > 1:
        raise InputError(f"need `num >= 3` points and `ratio > 1`, got {num} and {ratio}.")
    span = ratio ** (num - 1)
    if low * span >= high:
        raise InputError(
            f"a grid of {num} step sizes {ratio:g} apart spans a factor {span:g}, which "
            f"does not fit inside {low:g} < h * lambda_max < {high:g}; widen `h_lambda` "
            "or use fewer points."
        )
    largest = st.floats(max(low * span, high / 4) / lam, high / lam, exclude_max=True)
    return largest.map(lambda h: tuple(h / ratio**k for k in reversed(range(num))))


@st.composite
def _pytree(draw, like, max_leaves, max_ndim, max_side, scale):
    elements = st.floats(-scale, scale, allow_nan=False, allow_subnormal=False)
    if like is not None:
        leaves, treedef = jtu.tree_flatten(like)
        shapes = [np.shape(leaf) for leaf in leaves]
    else:
        num = draw(st.integers(1, max_leaves))
        shapes = draw(
            st.lists(
                hnp.array_shapes(min_dims=0, max_dims=max_ndim, max_side=max_side),
                min_size=num,
                max_size=num,
            )
        )
        container = draw(st.sampled_from(["tuple", "list", "dict"]))
        treedef = jtu.tree_structure(
            {str(k): 0 for k in range(num)}
            if container == "dict"
            else (tuple if container == "tuple" else list)(range(num))
        )
    arrays = [
        jnp.asarray(draw(hnp.arrays(np.float64, shape, elements=elements))) for shape in shapes
    ]
    return jtu.tree_unflatten(treedef, arrays)


def pytree_states(
    like=None,
    *,
    max_leaves: int = 3,
    max_ndim: int = 2,
    max_side: int = 3,
    scale: float = 1.0,
) -> st.SearchStrategy:
    r"""PyTrees of finite float64 arrays: states to evaluate a flow or a map at.

    With `like`, the states have its structure and leaf shapes (e.g.
    `pytree_states(problem.params)`: points near which to test a flow on that
    problem); otherwise a tuple, list or dict of up to `max_leaves` arrays of up
    to `max_ndim` axes of up to `max_side` entries. Entries lie in
    `[-scale, scale]` (no NaN, inf or subnormals).

    **Raises:** `driftlab.InputError` for a non-positive or non-finite `scale`.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"`scale` must be finite and positive, got {scale}.")
    return _pytree(like, max_leaves, max_ndim, max_side, float(scale))


@st.composite
def _partition(draw, problem, num_batches):
    m = draw(st.integers(*num_batches))
    return problem.batches(m, seed=draw(_SEEDS))


def batch_partitions(
    problem: AbstractProblem, *, num_batches: int | tuple[int, int] = (2, 3)
) -> st.SearchStrategy[Args]:
    r"""The problem's data split into `m` equal batches, shuffled by a drawn seed.

    **Returns:** stacks of batches (leading axis `m`), as `driftlab.SGDEpoch`
    takes them; see `AbstractProblem.batches`.

    **Raises:** `driftlab.InputError` for fewer than one batch, or more batches
    than samples.
    """
    num_batches = _checked_range(num_batches, "num_batches", low=1, integer=True)
    samples = jtu.tree_leaves(problem.data)[0].shape[0]
    if num_batches[1] > samples:
        raise InputError(
            f"`num_batches` {num_batches} asks for more batches than samples ({samples})."
        )
    return _partition(problem, num_batches)


def batch_orders(batches: Args) -> st.SearchStrategy[Args]:
    r"""The stack `batches` with its batches (the leading axis) in a drawn order.

    An epoch's modified flow depends on the order (`ExactBatchSGDFlow`); its
    average over orders does not (`SGDFlow`).
    """
    m = jtu.tree_leaves(batches)[0].shape[0]
    return st.permutations(range(m)).map(
        lambda order: jtu.tree_map(lambda leaf: leaf[np.asarray(order)], batches)
    )
