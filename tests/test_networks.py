"""The standard network problems: shapes, parameter counts, losses against numpy, seeds, errors."""

import sys

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.problems import (
    cnn_mnist1d,
    cnn_num_params,
    deep_linear,
    fc_digits,
    fc_num_params,
    fc_synthetic,
)


TINY = {
    "fc_digits": lambda seed=0, **kw: fc_digits(width=5, depth=2, num_samples=7, seed=seed, **kw),
    "cnn_mnist1d": lambda seed=0, **kw: cnn_mnist1d(
        channels=3, kernel_size=3, num_samples=6, seed=seed, **kw
    ),
    "deep_linear": lambda seed=0: deep_linear(dim=4, depth=3, num_samples=5, seed=seed),
    "fc_synthetic": lambda seed=0, **kw: fc_synthetic(
        width=6, depth=3, input_dim=4, num_outputs=3, num_samples=9, seed=seed, **kw
    ),
}
COUNTS = {
    "fc_digits": fc_num_params(5, 2, 64, 10),
    "cnn_mnist1d": cnn_num_params(3, 3),
    "deep_linear": 3 * 4 * 4,
    "fc_synthetic": fc_num_params(6, 3, 4, 3),
}
SAMPLES = {"fc_digits": (7, 64, 10), "cnn_mnist1d": (6, 40, 10), "deep_linear": (5, 4, 4)}
SAMPLES["fc_synthetic"] = (9, 4, 3)


def test_parameter_count_formulas_by_hand():
    # 64*200 + 200 + 200*200 + 200 + 200*10 + 10, and Cohen-style sizes quoted in docstrings.
    assert fc_num_params(200, 2, 64, 10) == 55210
    assert fc_num_params(980, 2, 64, 10) == 1_034_890
    # conv1 64*1*5 + 64, conv2 64*64*5 + 64, dense 64*10*10 + 10.
    assert cnn_num_params(64, 5) == 384 + 20544 + 6410


@pytest.mark.parametrize(
    "name",
    # The CNN's first loss compiles for ~8 s: it runs in the full suite only.
    [pytest.param(n, marks=[pytest.mark.slow] if n == "cnn_mnist1d" else []) for n in sorted(TINY)],
)
def test_shapes_counts_dtype_and_finite_loss(name):
    problem = TINY[name]()
    flat, _ = ravel_pytree(problem.params)
    assert flat.size == COUNTS[name]
    num, num_in, num_out = SAMPLES[name]
    assert problem.data["x"].shape == (num, num_in)
    assert problem.data["y"].shape == (num, num_out)
    leaves = jtu.tree_leaves((problem.params, problem.data))
    assert all(leaf.dtype == jnp.float64 for leaf in leaves)
    loss, grad = jax.value_and_grad(problem.loss)(problem.params, problem.data)
    assert loss.dtype == jnp.float64 and np.isfinite(loss)
    assert np.all(np.isfinite(ravel_pytree(grad)[0]))
    if name != "deep_linear":
        assert np.allclose(problem.data["y"].sum(axis=1), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_determinism_by_seed(name):
    first, again, other = TINY[name](0), TINY[name](0), TINY[name](1)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jtu.tree_leaves(first.params), jtu.tree_leaves(again.params))
    )
    assert np.array_equal(first.data["x"], again.data["x"])
    assert not np.array_equal(ravel_pytree(first.params)[0], ravel_pytree(other.params)[0])


def _numpy_losses(outputs, targets):
    mse = 0.5 * np.mean(np.sum((outputs - targets) ** 2, axis=1))
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    cross_entropy = -np.mean(np.sum(targets * log_softmax, axis=1))
    accuracy = np.mean(outputs.argmax(axis=1) == targets.argmax(axis=1))
    return {"mse": mse, "cross_entropy": cross_entropy}, accuracy


def _numpy_fc(params, x, activation):
    for i, layer in enumerate(params):
        x = x @ np.asarray(layer["W"]) + np.asarray(layer.get("b", 0.0))
        if i < len(params) - 1 and activation is not None:
            x = activation(x)
    return x


def _numpy_cnn(params, x):
    hidden = np.asarray(x)[:, None, :]
    for name in ("conv1", "conv2"):
        weights, bias = np.asarray(params[name]["W"]), np.asarray(params[name]["b"])
        pad = (weights.shape[-1] - 1) // 2
        padded = np.pad(hidden, ((0, 0), (0, 0), (pad, pad)))
        out = np.zeros((hidden.shape[0], weights.shape[0], hidden.shape[2]))
        for n in range(hidden.shape[0]):
            for o in range(weights.shape[0]):
                for i in range(weights.shape[1]):
                    out[n, o] += np.correlate(padded[n, i], weights[o, i], mode="valid")
        out = np.tanh(out + bias[None, :, None])
        hidden = 0.5 * (out[:, :, 0::2] + out[:, :, 1::2])
    flat = hidden.reshape(hidden.shape[0], -1)
    return flat @ np.asarray(params["dense"]["W"]) + np.asarray(params["dense"]["b"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
@pytest.mark.parametrize("name", ["fc_digits", "cnn_mnist1d", "fc_synthetic"])
def test_losses_and_accuracy_match_numpy(name, kind):
    problem = TINY[name](loss=kind)
    # Move away from the initialisation so outputs are not all near zero.
    params = jtu.tree_map(lambda p: p + 0.3, problem.params)
    x, y = np.asarray(problem.data["x"]), np.asarray(problem.data["y"])
    if name == "cnn_mnist1d":
        outputs = _numpy_cnn(params, x)
    else:
        outputs = _numpy_fc(params, x, np.tanh)
    losses, accuracy = _numpy_losses(outputs, y)
    assert float(problem.loss(params, problem.data)) == pytest.approx(losses[kind], rel=1e-12)
    assert float(problem.loss.accuracy(params, problem.data)) == pytest.approx(accuracy)


def test_deep_linear_is_the_matrix_product():
    problem = TINY["deep_linear"]()
    product = np.linalg.multi_dot([np.asarray(layer["W"]) for layer in problem.params])
    x, y = np.asarray(problem.data["x"]), np.asarray(problem.data["y"])
    expected = 0.5 * np.mean(np.sum((x @ product - y) ** 2, axis=1))
    assert float(problem.loss(problem.params, problem.data)) == pytest.approx(expected, rel=1e-12)
    assert all("b" not in layer for layer in problem.params)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fc_digits(activation="relu"), "`activation`"),
        (lambda: fc_digits(loss="hinge"), "`loss`"),
        (lambda: fc_digits(num_samples=2000), "`num_samples`"),
        (lambda: fc_synthetic(width=0), "`width`"),
        (lambda: cnn_mnist1d(num_samples=5001), "`num_samples`"),
        (lambda: deep_linear(depth=1.5), "`depth`"),
    ],
)
def test_bad_arguments_raise_input_error(make, match):
    with pytest.raises(dl.InputError, match=match):
        make()


def test_missing_mnist1d_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(dl.InputError, match=r"driftlab\[bench\]"):
        cnn_mnist1d(num_samples=4)
