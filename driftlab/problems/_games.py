import jax.numpy as jnp
import numpy as np

from .._custom_types import Scalar
from ._problem import Problem


def bilinear_game_losses():
    r"""The zero-sum bilinear game $\min_\phi\max_\theta \phi^\top B\theta$ (+ quadratic terms).

    `data = {"B": B, "P": P, "Q": Q}` gives
    $L_1 = \phi^\top B \theta + \frac12\phi^\top P\phi - \frac12\theta^\top Q\theta$
    for player one and $L_2 = -L_1$ for player two; $P = Q = 0$ is the pure
    bilinear game, where simultaneous GD spirals out and alternating GD
    does not (Rosca et al. 2021).
    """

    def loss_phi(params, data) -> Scalar:
        phi, theta = params
        return (
            phi @ data["B"] @ theta + 0.5 * phi @ data["P"] @ phi - 0.5 * theta @ data["Q"] @ theta
        )

    def loss_theta(params, data) -> Scalar:
        return -loss_phi(params, data)

    return loss_phi, loss_theta


def bilinear_game(dim: int = 2, *, regularisation: float = 0.0, seed: int = 0) -> Problem:
    """A seeded `dim` x `dim` bilinear (or, with `regularisation > 0`, quadratic) zero-sum game.

    `loss` is player one's loss; the pair of losses is `bilinear_game_losses()`.
    The parameters are the pair `(phi, theta)`.
    """
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    eye = regularisation * np.eye(dim)
    data = {"B": jnp.asarray(b), "P": jnp.asarray(eye), "Q": jnp.asarray(eye)}
    params = (
        jnp.asarray(rng.standard_normal(dim)),
        jnp.asarray(rng.standard_normal(dim)),
    )
    return Problem(name="game", loss=bilinear_game_losses()[0], params=params, data=data)


def tanh_game_losses():
    r"""A smooth non-zero-sum game whose fields are nonlinear in both players.

    $L_1 = \tanh(\phi)^\top B \tanh(\theta) + 0.1\sum\phi^4$ for player one,
    $L_2 = -\tanh(\phi)^\top B \tanh(\theta) + 0.1\sum\cosh\theta$ for player two:
    unlike the bilinear game, its modified flows have third-derivative terms.
    """

    def loss_phi(params, data) -> Scalar:
        phi, theta = params
        return jnp.tanh(phi) @ data["B"] @ jnp.tanh(theta) + 0.1 * jnp.sum(phi**4)

    def loss_theta(params, data) -> Scalar:
        phi, theta = params
        return -jnp.tanh(phi) @ data["B"] @ jnp.tanh(theta) + 0.1 * jnp.sum(jnp.cosh(theta))

    return loss_phi, loss_theta


def tanh_game(*, seed: int = 5) -> Problem:
    """The 3 x 3 `tanh_game_losses` game with a seeded `B` and a fixed start `(phi, theta)`.

    `loss` is player one's loss; the pair of losses is `tanh_game_losses()`.
    """
    b = np.random.default_rng(seed).standard_normal((3, 3))
    params = (jnp.array([0.3, -0.7, 0.2]), jnp.array([0.5, 0.1, -0.4]))
    return Problem(
        name="tanh-game", loss=tanh_game_losses()[0], params=params, data={"B": jnp.asarray(b)}
    )
