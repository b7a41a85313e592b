import functools as ft

import jax
import jax.numpy as jnp
import numpy as np
import sklearn.datasets

from .._custom_types import Scalar
from ._problem import Problem


_ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus}


@ft.cache
def _digits(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scikit-learn's bundled digits (no download): pixels scaled to [0, 1], one-hot labels."""
    digits = sklearn.datasets.load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:num_samples]
    inputs = digits.data[order].astype(np.float64) / 16.0
    labels = np.eye(10)[digits.target[order]]
    return inputs, labels


def _cross_entropy(logits, labels) -> Scalar:
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def logistic_loss(params: dict, batch: dict) -> Scalar:
    r"""Mean softmax cross-entropy of a linear model, plus $\frac{10^{-3}}{2}\|W\|^2$."""
    logits = batch["x"] @ params["W"] + params["b"]
    return _cross_entropy(logits, batch["y"]) + 5e-4 * jnp.sum(params["W"] ** 2)


def logistic_digits(*, num_samples: int = 256, seed: int = 0) -> Problem:
    """Multinomial logistic regression on scikit-learn's digits: 650 parameters, seeded."""
    inputs, labels = _digits(num_samples, seed)
    key = jax.random.key(seed)
    params = {"W": 0.1 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}
    data = {"x": jnp.asarray(inputs), "y": jnp.asarray(labels)}
    return Problem(name="logistic", loss=logistic_loss, params=params, data=data)


def mlp_loss(params: dict, batch: dict, activation: str = "tanh") -> Scalar:
    """Mean softmax cross-entropy of a one-hidden-layer MLP with a smooth activation."""
    hidden = _ACTIVATIONS[activation](batch["x"] @ params["W1"] + params["b1"])
    return _cross_entropy(hidden @ params["W2"] + params["b2"], batch["y"])


def mlp_digits(
    *,
    hidden: int = 16,
    activation: str = "tanh",
    num_samples: int = 256,
    seed: int = 0,
) -> Problem:
    r"""A 64-`hidden`-10 MLP on scikit-learn's digits, full batch or mini-batch.

    With `hidden=16`: 1210 parameters. Smooth activations only (`"tanh"` or
    `"softplus"`): backward error analysis needs a smooth loss. Weights are
    drawn with a fixed `seed` (LeCun-normal scaling), `num_samples` digits are
    drawn with the same seed.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)} (smooth), got {activation!r}."
        )
    inputs, labels = _digits(num_samples, seed)
    key1, key2 = jax.random.split(jax.random.key(seed))
    params = {
        "W1": jax.random.normal(key1, (64, hidden)) / np.sqrt(64.0),
        "b1": jnp.zeros(hidden),
        "W2": jax.random.normal(key2, (hidden, 10)) / np.sqrt(hidden),
        "b2": jnp.zeros(10),
    }
    data = {"x": jnp.asarray(inputs), "y": jnp.asarray(labels)}
    loss = mlp_loss if activation == "tanh" else ft.partial(mlp_loss, activation=activation)
    return Problem(name="mlp", loss=loss, params=params, data=data)
