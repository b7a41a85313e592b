"""Exact first and second moments of random-batch SGD and of its SMEs on quadratic batches."""

import equinox as eqx
import numpy as np
import scipy.linalg

from .._errors import check_step_size, InputError
from ..integrators._random import check_sampling, covariance_factor


class Moments(eqx.Module):
    r"""Exact moments: $\mathbb E\,\theta$ (`mean`), $\mathbb E\,\theta\theta^\top$ (`second`)."""

    mean: np.ndarray
    second: np.ndarray


def _quadratic_units(batches) -> tuple[np.ndarray, np.ndarray]:
    try:
        matrices, vectors = np.asarray(batches["A"]), np.asarray(batches["b"])
    except (KeyError, TypeError, IndexError) as error:
        raise InputError(
            "`batches` must be a stack of quadratic batches {'A': (N, d, d), 'b': (N, d)}, as "
            "`driftlab.problems.quadratic_batches` returns."
        ) from error
    if matrices.ndim != 3 or vectors.shape != matrices.shape[:2]:
        raise InputError(
            f"`batches['A']` must have shape (N, d, d) and `batches['b']` (N, d); got "
            f"{matrices.shape} and {vectors.shape}."
        )
    return matrices, vectors


def _augmented(matrices, vectors) -> np.ndarray:
    """$[-A_k,\\ b_k;\\ 0,\\ 0]$: the gradient step's generator on $z = (\\theta, 1)$."""
    num, dim = vectors.shape
    generators = np.zeros((num, dim + 1, dim + 1))
    generators[:, :dim, :dim] = -matrices
    generators[:, :dim, dim] = vectors
    return generators


def _second_moment_of(y0) -> np.ndarray:
    z = np.append(np.asarray(y0, dtype=np.float64), 1.0)
    return np.outer(z, z).ravel()


def _unpack(z: np.ndarray, dim: int) -> Moments:
    z = z.reshape(dim + 1, dim + 1)
    return Moments(mean=z[:dim, dim], second=z[:dim, :dim])


def sgd_moments(
    batches, y0, h, num_steps: int, *, batch_size: int = 1, replacement: bool = True
) -> Moments:
    r"""Exact first and second moments of random-batch SGD on quadratic units.

    With $L_k(\theta) = \frac12\theta^\top A_k\theta - b_k^\top\theta$ and
    $z = (\theta, 1)$, one step is $z \mapsto M_B z$ with $M_B$ the mean of
    $M_k = I - h[A_k,\ -b_k;\ 0,\ 0]$ over the drawn units, so
    $Z = \mathbb E zz^\top$ follows the linear recursion
    $\operatorname{vec} Z_{n+1} = \mathbb E[M_B\otimes M_B]\operatorname{vec} Z_n$, with
    $\mathbb E[M_B\otimes M_B] = \frac1b\overline{M\otimes M} + (1 - \frac1b)\bar M\otimes\bar M$
    (with replacement) or, without, the same with the pairs of distinct units,
    $\frac{N^2\bar M\otimes\bar M - \sum_k M_k\otimes M_k}{N(N-1)}$, in place of
    $\bar M\otimes\bar M$.

    **Arguments:** `batches` (`{'A': (N, d, d), 'b': (N, d)}`), `y0`, `h`,
    `num_steps`, and the sampling model (`examples` plays no role: each unit is one
    quadratic).
    """
    matrices, vectors = _quadratic_units(batches)
    num, dim = vectors.shape
    check_sampling(num, batch_size, replacement)
    h = check_step_size(h)
    steps = np.eye(dim + 1) + h * _augmented(matrices, vectors)
    z = _propagate(steps, batch_size, replacement, num_steps, _second_moment_of(y0))
    return _unpack(z, dim)


def _propagate(steps, batch_size: int, replacement: bool, num_steps: int, z0) -> np.ndarray:
    r"""$\operatorname{vec}\mathbb E zz^\top$ after `num_steps` of a random mean of the `steps`."""
    num, size = steps.shape[:2]
    own = np.einsum("kij,kab->iajb", steps, steps).reshape(size**2, -1) / num
    mean = steps.mean(axis=0)
    cross = np.kron(mean, mean)
    if not replacement:
        cross = (num**2 * cross - num * own) / (num * (num - 1)) if num > 1 else own
    transition = own / batch_size + (1 - 1 / batch_size) * cross
    return np.linalg.matrix_power(transition, num_steps) @ z0


def momentum_moments(
    batches,
    y0,
    h,
    beta,
    num_steps: int,
    *,
    nesterov: bool = False,
    batch_size: int = 1,
    replacement: bool = True,
) -> Moments:
    r"""Exact first and second moments of minibatch heavy-ball or Nesterov on quadratic units.

    The state $z = (\theta, m, 1)$ moves by an affine map of the drawn units'
    gradients $A_k\theta - b_k$: for heavy-ball $m' = \beta m + \bar g_B$,
    $\theta' = \theta - hm'$, for Nesterov $\theta' = \theta - h(\bar g_B + \beta m')$
    (driftlab's `HeavyBall`, `Nesterov`), so one step is $z \mapsto M_Bz$ with $M_B$ the
    mean of the units' matrices $M_k$, and $\mathbb E zz^\top$ follows the same linear
    recursion as in `sgd_moments`. The buffer starts at zero (`init`).

    **Returns:** `Moments` of the whole state $(\theta, m)$ (length $2d$).
    """
    matrices, vectors = _quadratic_units(batches)
    num, dim = vectors.shape
    check_sampling(num, batch_size, replacement)
    h = check_step_size(h)
    if not 0 <= float(beta) < 1:
        raise InputError(f"`beta` must lie in [0, 1), got {beta!r}.")
    eye = np.eye(dim)
    size = 2 * dim + 1
    steps = np.zeros((num, size, size))
    # The m rows: m' = beta m + A_k theta - b_k.
    steps[:, dim : 2 * dim, :dim] = matrices
    steps[:, dim : 2 * dim, dim : 2 * dim] = beta * eye
    steps[:, dim : 2 * dim, -1] = -vectors
    # The theta rows: theta' = theta - h (w g + beta' m), w = 1 + beta, beta' = beta^2 for
    # Nesterov (theta - h (g + beta m')), w = 1, beta' = beta for heavy-ball (theta - h m').
    weight, carried = (1 + beta, beta**2) if nesterov else (1.0, beta)
    steps[:, :dim, :dim] = eye - h * weight * matrices
    steps[:, :dim, dim : 2 * dim] = -h * carried * eye
    steps[:, :dim, -1] = h * weight * vectors
    steps[:, -1, -1] = 1.0
    start = np.concatenate([np.asarray(y0, dtype=np.float64), np.zeros(dim)])
    z = _propagate(steps, batch_size, replacement, num_steps, _second_moment_of(start))
    return _unpack(z, 2 * dim)


def sme_moments(
    batches,
    y0,
    h,
    t_end,
    *,
    order: int = 1,
    noise: bool = True,
    batch_size: int = 1,
    replacement: bool = True,
) -> Moments:
    r"""Exact moments at `t_end` of `StochasticModifiedEquation` on quadratic units.

    With `noise=False`, of its drift alone.

    The drift is affine, $f(\theta) = -B\theta + c$ with $B = \bar A$ (order 1) or
    $\bar A + \frac h2\bar A^2$, $c = (I + \frac h2 \bar A)\bar b$ (order 2), and
    each noise column $g_k - g = D_k z$ is linear in $z = (\theta, 1)$, so
    $Z = \mathbb E zz^\top$ solves the closed linear ODE
    $\dot Z = FZ + ZF^\top + \frac{hc}{N}\sum_k D_k Z D_k^\top$ ($\Sigma$ quadratic in
    $\theta$), solved here by one matrix exponential of size $(d+1)^2$.
    `order=1, noise=False` is gradient flow; `order=2, noise=False` the IGR flow.
    """
    matrices, vectors = _quadratic_units(batches)
    num, dim = vectors.shape
    check_sampling(num, batch_size, replacement)
    h, t_end = check_step_size(h), check_step_size(t_end, "t_end")
    if order not in (1, 2):
        raise InputError(f"`order` must be 1 or 2, got {order!r}.")
    generators = _augmented(matrices, vectors)
    drift = generators.mean(axis=0)
    if order == 2:
        drift = drift - 0.5 * h * drift @ drift  # f + h f_1 with f_1 = -f'f / 2
    eye = np.eye(dim + 1)
    generator = np.kron(drift, eye) + np.kron(eye, drift)
    if noise:
        scale = h * covariance_factor(num, batch_size, replacement) / num
        for deviation in generators - generators.mean(axis=0):
            generator += scale * np.kron(deviation, deviation)
    return _unpack(scipy.linalg.expm(t_end * generator) @ _second_moment_of(y0), dim)
