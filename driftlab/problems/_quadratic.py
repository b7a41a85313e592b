from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Float

from .._custom_types import Scalar
from ._problem import AbstractProblem


def quadratic_loss(y: Float[Array, " n"], data: dict) -> Scalar:
    r"""$L(y) = \frac12 y^\top A y - b^\top y$ with `data = {"A": A, "b": b}`."""
    return 0.5 * y @ data["A"] @ y - data["b"] @ y


def random_spectrum_matrix(eigenvalues: np.ndarray, *, seed: int = 0) -> Float[np.ndarray, "n n"]:
    """A symmetric matrix `Q diag(eigenvalues) Q^T` with a seeded random orthogonal `Q`."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((eigenvalues.size,) * 2))
    return (q * eigenvalues) @ q.T


class QuadraticProblem(AbstractProblem):
    r"""$L(y) = \frac12 y^\top A y$ with known spectrum, and its exact flows.

    On a quadratic every optimiser is linear in its state, so its exact
    modified field is a matrix logarithm; gradient descent's is
    $f_h(y) = \frac1h \log(I - hA)\, y$ and its $f_k = -A^{k+1}y/(k+1)$.
    """

    name: str = eqx.field(static=True)
    loss: Callable[[Float[Array, " n"], dict], Scalar]
    params: Float[Array, " n"]
    data: dict
    A: Float[Array, "n n"]

    @property
    def lambda_max(self) -> float:
        return float(np.linalg.eigvalsh(np.asarray(self.A))[-1])

    def gradient_flow_solution(self, y0, t) -> Float[Array, " n"]:
        r"""$e^{-tA} y_0$: gradient flow, exactly."""
        return jnp.asarray(scipy.linalg.expm(-t * np.asarray(self.A)) @ np.asarray(y0))

    def igr_flow_solution(self, y0, t, h) -> Float[Array, " n"]:
        r"""$e^{-t(A + \frac h2 A^2)} y_0$: the IGR flow, exactly."""
        a = np.asarray(self.A)
        return jnp.asarray(scipy.linalg.expm(-t * (a + 0.5 * h * a @ a)) @ np.asarray(y0))

    def gd_modified_field_matrix(self, h) -> Float[np.ndarray, "n n"]:
        r"""$\frac1h \log(I - hA)$: GD's exact modified field (real for $h\lambda_{max} < 1$)."""
        a = np.asarray(self.A)
        return scipy.linalg.logm(np.eye(a.shape[0]) - h * a) / h


def quadratic(
    dim: int = 5,
    *,
    condition: float = 10.0,
    lambda_max: float = 1.0,
    seed: int = 0,
) -> QuadraticProblem:
    """A seeded quadratic `1/2 y^T A y` in `dim` dimensions.

    Eigenvalues are log-spaced from `lambda_max / condition` to `lambda_max`.
    The data `{"A": A, "b": 0}` is the full batch; initial parameters are a
    seeded unit-norm vector.
    """
    eigenvalues = np.geomspace(lambda_max / condition, lambda_max, dim)
    a = jnp.asarray(random_spectrum_matrix(eigenvalues, seed=seed))
    y0 = np.random.default_rng(seed + 1).standard_normal(dim)
    return QuadraticProblem(
        name="quadratic",
        loss=quadratic_loss,
        params=jnp.asarray(y0 / np.linalg.norm(y0)),
        data={"A": a, "b": jnp.zeros(dim)},
        A=a,
    )


def quadratic_batches(
    dim: int = 4, num_batches: int = 3, *, seed: int = 0, linear_terms: bool = False
) -> tuple[np.ndarray, dict]:
    r"""A stack of minibatch quadratics $L_k(y) = \frac12 y^\top A_k y - b_k^\top y$.

    Each $A_k = X_k X_k^\top / \text{dim} + 0.1 I$ is a different seeded
    positive-definite matrix, so SGD's epoch map is a product of different
    linear maps and its exact modified field is a matrix logarithm.
    `linear_terms=False` sets every $b_k = 0$.

    **Returns:** `(matrices, batches)`: the $A_k$ as a numpy array, and the stack
    `{"A": ..., "b": ...}` with a leading batch axis, as `driftlab.SGDEpoch` takes.
    """
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((num_batches, dim, dim))
    matrices = factors @ factors.transpose(0, 2, 1) / dim + 0.1 * np.eye(dim)
    b = rng.standard_normal((num_batches, dim)) if linear_terms else np.zeros((num_batches, dim))
    return matrices, {"A": jnp.asarray(matrices), "b": jnp.asarray(b)}
