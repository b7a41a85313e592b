"""The field's standard network shapes, offline: fc on digits, a 1-D CNN on mnist1d, deep linear."""

import functools as ft
import random

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._custom_types import Scalar
from .._errors import InputError
from ._digits import _digits
from ._problem import Problem


_ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus}
_LOSSES = ("mse", "cross_entropy")
_MNIST1D_LENGTH = 40
_MNIST1D_SAMPLES = 5000


def _check_choices(activation: str, loss: str) -> None:
    if activation not in _ACTIVATIONS:
        raise InputError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)} (smooth: backward error "
            f"analysis differentiates the loss several times), got {activation!r}."
        )
    if loss not in _LOSSES:
        raise InputError(f"`loss` must be one of {list(_LOSSES)}, got {loss!r}.")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise InputError(f"`{name}` must be a positive integer, got {value!r}.")


class FullyConnected(eqx.Module):
    r"""A fully connected network $x \mapsto W_D\sigma(\cdots\sigma(W_1 x + b_1)\cdots) + b_D$.

    Parameters are a list of `{"W": (fan_in, fan_out), "b": (fan_out,)}` layers;
    the last layer is linear. `activation=None` makes every layer linear (and
    biasless layers are allowed: a layer without `"b"` has no bias), which is the
    deep linear network.
    """

    activation: str | None = eqx.field(static=True)

    def __call__(self, params: list, inputs):
        hidden = inputs
        for i, layer in enumerate(params):
            hidden = hidden @ layer["W"]
            if "b" in layer:
                hidden = hidden + layer["b"]
            if i < len(params) - 1 and self.activation is not None:
                hidden = _ACTIVATIONS[self.activation](hidden)
        return hidden


class Conv1D(eqx.Module):
    r"""Two 'same'-padded 1-D convolutions, each followed by the activation and
    average pooling by 2, then a linear read-out (Cohen et al.'s `cnn [32, 32]`
    in one dimension; average rather than max pooling keeps the loss smooth).

    Inputs have shape `(batch, length)`; parameters are
    `{"conv1": {"W": (channels, 1, k), "b"}, "conv2": {"W": (channels, channels, k), "b"},
    "dense": {"W": (channels * length / 4, outputs), "b"}}`.
    """

    activation: str = eqx.field(static=True)

    def __call__(self, params: dict, inputs):
        sigma = _ACTIVATIONS[self.activation]
        hidden = inputs[:, None, :]
        for name in ("conv1", "conv2"):
            layer = params[name]
            kernel_size = layer["W"].shape[-1]
            # The convolution as one matrix product over shifted copies ("im2col"): XLA's
            # float64 convolutions on CPU are an order of magnitude slower than its GEMM.
            left = (kernel_size - 1) // 2
            padded = jnp.pad(hidden, ((0, 0), (0, 0), (left, kernel_size - 1 - left)))
            length = hidden.shape[-1]
            patches = jnp.stack([padded[..., j : j + length] for j in range(kernel_size)], -1)
            hidden = jnp.einsum("bclk,ock->bol", patches, layer["W"])
            hidden = sigma(hidden + layer["b"][None, :, None])
            batch, channels, length = hidden.shape
            hidden = hidden.reshape(batch, channels, length // 2, 2).mean(axis=-1)
        flat = hidden.reshape(hidden.shape[0], -1)
        return flat @ params["dense"]["W"] + params["dense"]["b"]


class NetworkLoss(eqx.Module):
    r"""The mean loss of a network's outputs $f(x_i)$ against targets $y_i$.

    `kind="mse"`: $L = \frac{1}{n}\sum_i \frac12\|f(x_i) - y_i\|^2$ (one-hot
    targets for classification, as Cohen et al. 2021 train with the square
    loss); `kind="cross_entropy"`:
    $L = -\frac{1}{n}\sum_i \sum_c y_{ic}\log\operatorname{softmax}(f(x_i))_c$.
    Called as `loss(params, batch)` with `batch = {"x": inputs, "y": targets}`.
    """

    network: FullyConnected | Conv1D
    kind: str = eqx.field(static=True)

    def __call__(self, params, batch: dict) -> Scalar:
        outputs = self.network(params, batch["x"])
        if self.kind == "mse":
            return 0.5 * jnp.mean(jnp.sum((outputs - batch["y"]) ** 2, axis=-1))
        return -jnp.mean(jnp.sum(batch["y"] * jax.nn.log_softmax(outputs), axis=-1))

    def accuracy(self, params, batch: dict) -> Scalar:
        """The fraction of examples whose largest output is the target's largest entry."""
        outputs = self.network(params, batch["x"])
        hits = jnp.argmax(outputs, axis=-1) == jnp.argmax(batch["y"], axis=-1)
        return jnp.mean(hits.astype(outputs.dtype))


def _dense_layers(key, sizes, *, bias: bool = True) -> list:
    """LeCun-normal weights (variance 1 / fan_in) and zero biases, one key per layer."""
    layers = []
    for subkey, fan_in, fan_out in zip(jr.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        layer = {"W": jr.normal(subkey, (fan_in, fan_out)) / np.sqrt(fan_in)}
        if bias:
            layer["b"] = jnp.zeros(fan_out)
        layers.append(layer)
    return layers


def fc_num_params(width: int, depth: int, input_dim: int, num_outputs: int) -> int:
    r"""Parameters of a `depth`-hidden-layer fc network with biases:
    $(d_{in}+1)w + (D-1)(w+1)w + (w+1)d_{out}$."""
    return (input_dim + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_outputs


def fc_digits(
    *,
    width: int = 200,
    depth: int = 2,
    activation: str = "tanh",
    loss: str = "mse",
    num_samples: int = 1000,
    seed: int = 0,
) -> Problem:
    r"""Cohen et al.'s `fc-tanh [200, 200]` on scikit-learn's digits (bundled, offline).

    A 64-`width`-...-`width`-10 network with `depth` hidden layers (55,210
    parameters with the defaults: `fc_num_params(200, 2, 64, 10)`), LeCun-normal
    weights drawn with `seed`, zero biases; `num_samples` of the 1797 digits
    drawn with the same seed, pixels in [0, 1], one-hot targets. `loss` is
    `"mse"` (half the squared error to the one-hot target, averaged over
    examples) or `"cross_entropy"`; see `NetworkLoss`, which also gives
    `problem.loss.accuracy(params, batch)`.

    **Raises:** `driftlab.InputError` for a non-smooth or unknown `activation`,
    an unknown `loss`, or sizes out of range.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{cohen2021gradient,
          title={Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability},
          author={Cohen, Jeremy and Kaur, Simran and Li, Yuanzhi and Kolter, J. Zico
                  and Talwalkar, Ameet},
          booktitle={International Conference on Learning Representations},
          year={2021}
        }
        ```
    """
    _check_choices(activation, loss)
    _check_positive(width=width, depth=depth, num_samples=num_samples)
    if num_samples > 1797:
        raise InputError(f"`num_samples` must be at most 1797 (the digits), got {num_samples}.")
    inputs, labels = _digits(num_samples, seed)
    params = _dense_layers(jr.key(seed), [64] + [width] * depth + [10])
    data = {"x": jnp.asarray(inputs), "y": jnp.asarray(labels)}
    network_loss = NetworkLoss(FullyConnected(activation), loss)
    return Problem(name="fc-digits", loss=network_loss, params=params, data=data)


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """mnist1d's procedural generator with its default arguments (seed 42): no download."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise InputError(
            "`cnn_mnist1d` needs the `mnist1d` package: `pip install 'driftlab[bench]'` "
            "(or `pip install mnist1d`)."
        ) from None
    return _generate_mnist1d(make_dataset, get_dataset_args)


@ft.cache
def _generate_mnist1d(make_dataset, get_dataset_args) -> tuple[np.ndarray, np.ndarray]:
    # make_dataset reseeds the global `random` and `numpy.random` generators: keep ours.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        dataset = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    inputs = np.concatenate([dataset["x"], dataset["x_test"]]).astype(np.float64)
    labels = np.concatenate([dataset["y"], dataset["y_test"]])
    return inputs, labels


def cnn_num_params(channels: int, kernel_size: int, length: int = 40, num_outputs: int = 10):
    r"""Parameters of `Conv1D`: $(k+1)c + (kc+1)c + (c\,\ell/4 + 1)\,d_{out}$."""
    return (
        (kernel_size + 1) * channels
        + (kernel_size * channels + 1) * channels
        + (channels * (length // 4) + 1) * num_outputs
    )


def cnn_mnist1d(
    *,
    channels: int = 64,
    kernel_size: int = 5,
    activation: str = "tanh",
    loss: str = "mse",
    num_samples: int = 1000,
    seed: int = 0,
) -> Problem:
    r"""A 1-D CNN (`Conv1D`) on mnist1d: 27,338 parameters with the defaults.

    The data come from mnist1d's procedural generator `make_dataset` with its
    default arguments (5,000 signals of length 40, its own fixed seed 42; its
    train and test parts together), never its download path; `num_samples` of
    them are drawn with `seed`, which also seeds the weights (LeCun-normal,
    zero biases). Targets are one-hot; `loss` as in `fc_digits`.

    **Raises:** `driftlab.InputError` if `mnist1d` is not installed (it is in
    the `bench` and `test` extras), or for bad choices or sizes.

    ??? cite "Reference"
        ```bibtex
        @article{greydanus2020scaling,
          title={Scaling Down Deep Learning with {MNIST-1D}},
          author={Greydanus, Sam and Kobak, Dmitry},
          journal={arXiv preprint arXiv:2011.14439},
          year={2020}
        }
        ```
    """
    _check_choices(activation, loss)
    _check_positive(channels=channels, kernel_size=kernel_size, num_samples=num_samples)
    if num_samples > _MNIST1D_SAMPLES:
        raise InputError(
            f"`num_samples` must be at most {_MNIST1D_SAMPLES} (mnist1d's default "
            f"generator), got {num_samples}."
        )
    all_inputs, all_labels = _mnist1d()
    order = np.random.default_rng(seed).permutation(len(all_labels))[:num_samples]
    keys = jr.split(jr.key(seed), 3)
    flat = channels * (_MNIST1D_LENGTH // 4)
    params = {
        "conv1": {
            "W": jr.normal(keys[0], (channels, 1, kernel_size)) / np.sqrt(kernel_size),
            "b": jnp.zeros(channels),
        },
        "conv2": {
            "W": jr.normal(keys[1], (channels, channels, kernel_size))
            / np.sqrt(channels * kernel_size),
            "b": jnp.zeros(channels),
        },
        "dense": _dense_layers(keys[2], [flat, 10])[0],
    }
    data = {"x": jnp.asarray(all_inputs[order]), "y": jnp.asarray(np.eye(10)[all_labels[order]])}
    return Problem(
        name="cnn-mnist1d",
        loss=NetworkLoss(Conv1D(activation), loss),
        params=params,
        data=data,
    )


def deep_linear(
    *,
    dim: int = 50,
    depth: int = 20,
    num_samples: int = 1000,
    init_scale: float = 1.0,
    init_noise: float = 0.1,
    seed: int = 0,
) -> Problem:
    r"""A deep linear network $x \mapsto W_D\cdots W_1 x$ regressing a random linear map.

    `depth` bias-free `dim` x `dim` layers ($D d^2$ parameters: 50,000 for
    Cohen et al.'s $d = 50$, $D = 20$), initialised at a scaled identity,
    $W_l = sI + \sigma G_l$ with $s$ = `init_scale`, $G_l$ normal of
    variance $1/d$ and $\sigma$ = `init_noise` (random layers of variance
    $1/d$ would start with a product, and a sharpness, that grow
    exponentially in the depth; $s < 1$ starts the product small, near $s^D I$);
    inputs $x_i \sim N(0, I_d)$ and targets $y_i = A x_i$ with $A$ normal
    with variance $1/d$, all drawn with `seed`. The loss is the half squared
    error averaged over the `num_samples` examples (`NetworkLoss(kind="mse")`).
    Training moves the product from near $s^D I$ to $A$, and the sharpness
    rises with it (about $D\,\sigma_{max}(A)^{2 - 2/D}$ at a balanced solution).
    """
    _check_positive(dim=dim, depth=depth, num_samples=num_samples)
    key_data, key_target, key_params = jr.split(jr.key(seed), 3)
    inputs = jr.normal(key_data, (num_samples, dim))
    target_map = jr.normal(key_target, (dim, dim)) / np.sqrt(dim)
    noise = _dense_layers(key_params, [dim] * (depth + 1), bias=False)
    params = [{"W": init_scale * jnp.eye(dim) + init_noise * layer["W"]} for layer in noise]
    data = {"x": inputs, "y": inputs @ target_map}
    return Problem(
        name="deep-linear",
        loss=NetworkLoss(FullyConnected(None), "mse"),
        params=params,
        data=data,
    )


def fc_synthetic(
    *,
    width: int = 64,
    depth: int = 2,
    input_dim: int = 64,
    num_outputs: int = 10,
    activation: str = "tanh",
    loss: str = "mse",
    num_samples: int = 256,
    seed: int = 0,
) -> Problem:
    r"""A fully connected network of any size on synthetic inputs, for scaling runs.

    `fc_num_params(width, depth, input_dim, num_outputs)` parameters (e.g.
    width 700, depth 2, 64 inputs: 0.54 million; width 980: 1.03 million).
    Inputs $x_i \sim N(0, I)$; labels are the argmax of a random linear
    teacher $x \mapsto Ax$, one-hot, so the task is learnable; weights,
    inputs and teacher are drawn with `seed`. `activation` and `loss` as in
    `fc_digits`.
    """
    _check_choices(activation, loss)
    _check_positive(
        width=width,
        depth=depth,
        input_dim=input_dim,
        num_outputs=num_outputs,
        num_samples=num_samples,
    )
    key_data, key_teacher, key_params = jr.split(jr.key(seed), 3)
    inputs = jr.normal(key_data, (num_samples, input_dim))
    teacher = jr.normal(key_teacher, (input_dim, num_outputs))
    labels = jax.nn.one_hot(jnp.argmax(inputs @ teacher, axis=-1), num_outputs)
    params = _dense_layers(key_params, [input_dim] + [width] * depth + [num_outputs])
    return Problem(
        name="fc-synthetic",
        loss=NetworkLoss(FullyConnected(activation), loss),
        params=params,
        data={"x": inputs, "y": labels},
    )
