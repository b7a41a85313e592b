"""Non-smooth losses: a kink crossed during the measured step is listed, not fitted."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import driftlab as dl
from driftlab.integrators._kinks import crossed_kinks, kinks


@ft.cache
def _relu_problem():
    """A 3-8-1 ReLU MLP in float64 (41 parameters), 16 samples, a squared loss."""
    model = eqx.nn.MLP(3, 1, 8, 1, activation=jax.nn.relu, key=jr.key(0))
    model = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if eqx.is_array(x) else x, model
    )
    xs = jr.normal(jr.key(1), (16, 3), jnp.float64)
    batch = (xs, jnp.sin(xs.sum(axis=1, keepdims=True)))

    def loss(m, batch):
        inputs, targets = batch
        return jnp.mean((jax.vmap(m)(inputs) - targets) ** 2)

    return model, batch, loss


def _activations(model, inputs):
    """The hidden layer's activation pattern, by hand: W x + b > 0 per sample and unit."""
    layer = model.layers[0]
    return np.asarray(inputs @ layer.weight.T + layer.bias > 0)


def test_crossings_are_the_activation_pattern_switches():
    model, batch, loss = _relu_problem()
    step = dl.GradientDescent(loss)
    # `relu` is `max(x, 0)` forward and a `where(x > 0, ...)` in its derivative.
    assert [k.primitive for k in kinks(step, model, 0.1, batch)] == ["max", "gt"]
    start = _activations(model, batch[0])
    for h in [0.01, 0.32]:
        end = step(model, h, batch)
        switches = int(np.sum(start != _activations(end, batch[0])))
        found = crossed_kinks(step, model, [end], h, batch)
        if switches == 0:
            assert found is None
        else:
            assert f"{2 * switches} of {2 * start.size} branch entries switch" in found
            assert "`max`" in found
    assert crossed_kinks(step, model, [step(model, 0.32, batch)], 0.32, batch) is not None
    tanh_step = dl.GradientDescent(
        lambda m, b: loss(eqx.tree_at(lambda m: m.activation, m, jnp.tanh), b)
    )
    assert kinks(tanh_step, model, 0.1, batch) == []


@pytest.mark.slow  # ~25 s: compiles the order-1 flow of a new network
def test_relu_network_order_holds_between_kinks():
    model, batch, loss = _relu_problem()
    step = dl.GradientDescent(loss)
    make_flow = lambda h: dl.ModifiedFlow(step, h, order=1)
    # The failure: slope 2.02 reported as a normal result where kinks are crossed.
    hs = [0.01, 0.02, 0.04, 0.16, 0.32]
    with pytest.warns(dl.StabilityWarning, match="2 of 5 points cross a kink") as record:
        estimate = dl.order_of_accuracy(step, make_flow, model, hs, "local", batch)
    assert record[0].filename == __file__
    assert list(estimate.used) == [True, True, True, False, False]
    assert list(estimate.causes) == ["", "", "", "kink", "kink"]
    assert all("kink of the map is crossed" in line for line in estimate.excluded)
    assert "no (kink crossed)" in str(estimate)
    assert estimate.agrees(0.15), estimate  # local error of an order-1 flow: slope 3
    with pytest.raises(dl.MeasurementError, match="too few are left"):
        dl.order_of_accuracy(step, make_flow, model, [0.08, 0.16, 0.32], "local", batch)
    # A single measurement across a kink says so.
    with pytest.warns(dl.StabilityWarning, match="h = 0.32: a kink of the map is crossed"):
        measured = dl.local_error(step, make_flow(0.32), model, 0.32, batch)
    assert measured.kink


@pytest.mark.slow  # ~15-40 s: compiles the order-1 flow of a new loss
def test_l1_loss_order_holds_between_kinks():
    model, batch, loss = _relu_problem()
    model = eqx.tree_at(lambda m: m.activation, model, jnp.tanh)

    def l1(m, batch):
        inputs, targets = batch
        return jnp.mean(jnp.abs(jax.vmap(m)(inputs) - targets))

    step = dl.GradientDescent(l1)
    # The map uses only the gradient: the kink it sees is the `x >= 0` switch of abs'.
    assert [k.primitive for k in kinks(step, model, 0.1, batch)] == ["ge"]
    with pytest.warns(dl.StabilityWarning, match="1 of 4 points cross a kink"):
        estimate = dl.order_of_accuracy(
            step,
            lambda h: dl.ModifiedFlow(step, h, order=1),
            model,
            [0.04, 0.08, 0.16, 0.32],
            "local",
            batch,
        )
    assert list(estimate.causes) == ["", "", "", "kink"]
    assert "`ge`" in estimate.excluded[0]
    assert estimate.agrees(0.1), estimate
