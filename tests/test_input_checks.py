"""A new user's slips, each caught with one clear line: float32 models, factories, direct calls.

Every case here returned a number, printed a raw traceback or a page of equinox's
debugging advice before (driftlab issue 28, items 4, 6 and 8).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import driftlab as dl


def _loss(model, batch):
    inputs, targets = batch
    return jnp.mean((jax.vmap(model)(inputs) - targets) ** 2)


def _batch():
    xs = jr.normal(jr.key(1), (8, 2), jnp.float64)
    return xs, jnp.sin(xs.sum(axis=1, keepdims=True))


def _float32_model():
    """An MLP whose weights are float32, as Equinox builds them before driftlab enables x64."""
    model = eqx.nn.MLP(2, 1, 4, 1, activation=jax.nn.tanh, key=jr.key(0))
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if eqx.is_array(x) else x, model
    )


_GD = dl.GradientDescent(_loss)
_SGD = dl.integrators.RandomBatchSGD(_loss, batch_size=2, examples=True)
#: Every entry point that takes a parameter PyTree, as `(model, batch) -> anything`.
_ENTRY_POINTS = {
    "flow(t, y, args)": lambda m, b: dl.IGRFlow(_loss, 0.1)(0.0, m, b),
    "PrincipalFlow": lambda m, b: dl.PrincipalFlow(_loss, 0.1)(0.0, m, b),
    "ModifiedFlow.coefficients": lambda m, b: dl.ModifiedFlow(_GD, 0.1, 1).coefficients(m, b),
    "modified_loss": lambda m, b: dl.IGRFlow(_loss, 0.1).modified_loss(m, b),
    "CentralFlow.integrate": lambda m, b: dl.CentralFlow(_loss, 0.1).integrate(m, 2, b),
    "sme.solve": lambda m, b: dl.StochasticModifiedEquation.of(_SGD, b, 0.1).solve(
        m, 0.2, key=jr.key(0), dt=0.1
    ),
    "stability_index": lambda m, b: dl.stability_index(_GD, m, 0.1, b),
    "iterate": lambda m, b: dl.iterate(_GD, m, 0.1, 2, b),
    "local_error": lambda m, b: dl.local_error(_GD, dl.GradientFlow(_loss), m, 0.1, b),
    "lambda_max": lambda m, b: dl.lambda_max(_loss, m, b),
}


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("name", sorted(_ENTRY_POINTS))
def test_a_float32_model_is_refused_with_a_conversion_that_works_on_models(name):
    model, batch = _float32_model(), _batch()
    with pytest.raises(dl.InputError, match="dtype float32; driftlab needs float64") as info:
        _ENTRY_POINTS[name](model, batch)
    # The advised conversion keeps the activation (a bare `jnp.asarray` over a model fails).
    assert "eqx.is_array(x) else x" in str(info.value)
    converted = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if eqx.is_array(x) else x, model
    )
    _ENTRY_POINTS[name](converted, batch)


def test_direct_flow_calls_refuse_non_finite_states():
    batch = _batch()
    model = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if eqx.is_array(x) else x, _float32_model()
    )
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, model.layers[0].bias.at[0].set(jnp.nan))
    with pytest.raises(dl.InputError, match="`y` contains NaN or inf"):
        dl.IGRFlow(_loss, 0.1)(0.0, model, batch)
    with pytest.raises(dl.InputError, match="`y` contains NaN or inf"):
        dl.ModifiedFlow(_GD, 0.1, 2).coefficients(model, batch)


def test_a_jitted_flow_call_is_not_checked_and_gives_the_same_field():
    y = jnp.array([0.3, -0.2])
    loss = lambda p, b: jnp.sum(p**4) + jnp.sum(p) * b
    flow = dl.IGRFlow(loss, 0.1)
    eager, jitted = flow(0.0, y, 1.0), eqx.filter_jit(flow)(0.0, y, 1.0)
    assert jnp.allclose(eager, jitted, rtol=1e-14, atol=0)


def test_principal_flow_beyond_one_says_complex_state_in_one_line():
    a = jnp.diag(jnp.array([1.0, 3.0]))
    loss = lambda y, args: 0.5 * y @ a @ y
    flow = dl.PrincipalFlow(loss, 1 / 2.0, method="dense")
    with pytest.raises(dl.MeasurementError) as info:
        flow(0.0, jnp.array([1.0, 1.0]), None)
    message = str(info.value)
    assert message.startswith("PrincipalFlow: h * lambda_i >= 1")
    assert "complex_state=True" in message and "astype" not in message
    assert "\n" not in message and "EQX_ON_ERROR" not in message
    # The advice works: the measurement with a complex state runs (GD on a quadratic lies
    # on its principal flow, so the error is at round-off).
    y0 = jnp.array([1.0, 1.0])
    error = dl.local_error(dl.GradientDescent(loss), flow, y0, 0.5, complex_state=True)
    assert error.error < 1e-10


def test_a_built_optax_transformation_is_refused_naming_the_factory():
    with pytest.raises(dl.InputError, match=r"`make_optimiser` .* `lambda h: optax.adam\(h\)`"):
        dl.OptaxStepMap(_loss, optax.adam(1e-3))
    with pytest.raises(dl.InputError, match="`make_optimiser` must be a function"):
        dl.OptaxStepMap(_loss, 0.001)


def test_a_built_flow_is_refused_where_make_flow_is_expected():
    y0 = jnp.array([1.0, -0.5])
    loss = lambda y, args: 0.5 * jnp.sum(y**2)
    with pytest.raises(dl.InputError, match=r"`make_flow` .* `lambda h: IGRFlow\(\.\.\., h\)`"):
        dl.order_of_accuracy(dl.GradientDescent(loss), dl.IGRFlow(loss, 0.1), y0, [0.05, 0.1, 0.2])


def test_a_built_sde_is_refused_where_make_sde_is_expected():
    batch = _batch()
    sde = dl.StochasticModifiedEquation.of(_SGD, batch, 0.1)
    with pytest.raises(dl.InputError, match=r"`make_sde` .* StochasticModifiedEquation.of"):
        dl.weak_order_of_accuracy(
            _SGD, sde, _float32_model(), [0.1, 0.2, 0.4], 0.4, jnp.sum, 4, jr.key(0)
        )
