"""Models as parameters: an Equinox MLP (non-array leaves) wherever a parameter PyTree goes."""

import functools as ft
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl

from . import helpers


@ft.cache
def _model_problem():
    """A 3-8-1 tanh MLP in float64 (41 parameters), 16 samples, and its loss."""
    model = eqx.nn.MLP(3, 1, 8, 1, activation=jax.nn.tanh, key=jr.key(0))
    model = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if eqx.is_array(x) else x, model
    )
    xs = jr.normal(jr.key(1), (16, 3), jnp.float64)
    batch = (xs, jnp.sin(xs.sum(axis=1, keepdims=True)))

    def loss(m, batch):
        inputs, targets = batch
        return jnp.mean((jax.vmap(m)(inputs) - targets) ** 2)

    return model, batch, loss


def _flat_problem():
    """The same problem on the ravelled array leaves: an independent route to every number."""
    model, batch, loss = _model_problem()
    arrays, static = eqx.partition(model, eqx.is_array)
    flat, unravel = ravel_pytree(arrays)
    return flat, (lambda u, b: loss(eqx.combine(unravel(u), static), b)), unravel


def _arrays(tree):
    return eqx.filter(tree, eqx.is_array)


def test_gd_step_on_a_model():
    model, batch, loss = _model_problem()
    h = 0.1
    new = dl.GradientDescent(loss)(model, h, batch)
    assert new.activation is model.activation
    flat, flat_loss, unravel = _flat_problem()
    expected = unravel(flat - h * jax.grad(flat_loss)(flat, batch))
    assert helpers.tree_allclose(_arrays(new), expected, rtol=1e-14, atol=1e-14)
    three = dl.iterate(dl.GradientDescent(loss), model, h, 3, batch)
    last = jax.tree_util.tree_map(lambda x: x[-1], _arrays(three))
    assert three.activation is model.activation
    assert helpers.tree_allclose(
        last, _arrays(dl.integrators.advance(dl.GradientDescent(loss), model, h, 3, batch))
    )


def test_modified_flow_order_one_is_igr_on_a_model():
    model, batch, loss = _model_problem()
    h = 0.05
    modified = dl.ModifiedFlow(dl.GradientDescent(loss), h, 1)(0.0, model, batch)
    igr = dl.IGRFlow(loss, h)(0.0, model, batch)
    assert helpers.relative_error(modified, igr) < 1e-12
    # The field on the flat problem: -g - h/2 H g, with the Hessian formed densely.
    flat, flat_loss, unravel = _flat_problem()
    g = jax.grad(flat_loss)(flat, batch)
    hessian = jax.hessian(flat_loss)(flat, batch)
    assert helpers.relative_error(igr, unravel(-g - 0.5 * h * hessian @ g)) < 1e-12


@pytest.mark.slow
def test_solve_and_measurements_on_a_model():
    model, batch, loss = _model_problem()
    step, h = dl.GradientDescent(loss), 0.05
    end = dl.solve(dl.GradientFlow(loss), model, 0.5, args=batch)
    assert end.activation is model.activation
    flat, flat_loss, _ = _flat_problem()
    flat_step = dl.GradientDescent(flat_loss)
    error = dl.local_error(step, dl.IGRFlow(loss, h), model, h, batch).error
    flat_error = dl.local_error(flat_step, dl.IGRFlow(flat_loss, h), flat, h, batch).error
    assert abs(error - flat_error) <= 1e-9 * flat_error
    estimate = dl.order_of_accuracy(
        step, lambda h: dl.IGRFlow(loss, h), model, [0.05, 0.1, 0.2], "local", batch
    )
    assert estimate.errors[0] == error
    assert estimate.agrees(0.3), estimate  # O(h^3)


@pytest.mark.slow
def test_optax_momentum_on_a_model_matches_optax():
    model, batch, loss = _model_problem()
    h, beta = 0.05, 0.5
    step = dl.OptaxStepMap(loss, lambda h: optax.sgd(h, momentum=beta))
    state = dl.integrators.advance(step, step.init(model), h, 3, batch)
    optimiser = optax.sgd(h, momentum=beta)
    params, opt_state = model, optimiser.init(_arrays(model))
    for _ in range(3):
        grads = eqx.filter_grad(loss)(params, batch)
        updates, opt_state = optimiser.update(grads, opt_state, _arrays(params))
        params = eqx.apply_updates(params, updates)
    assert helpers.tree_allclose(_arrays(state.params), _arrays(params), rtol=1e-13, atol=1e-14)
    flow = dl.ModifiedFlow(dl.HeavyBall(loss, beta), 0.01, 1)
    assert flow.slow_state(model, batch).params.activation is model.activation


def test_state_where_parameters_are_expected():
    model, batch, loss = _model_problem()
    for step in (
        dl.HeavyBall(loss, 0.5),
        dl.OptaxStepMap(loss, lambda h: optax.sgd(h, momentum=0.5)),
    ):
        state = step.init(model, batch)
        flow = dl.ModifiedFlow(step, 0.01, 1)
        with pytest.raises(dl.InputError, match=r"`y` is a state of .* parameters are expected"):
            flow.coefficients(state, batch)
        with pytest.raises(dl.InputError, match=r"`params` is a state of"):
            flow.slow_state(state, batch)
        with pytest.raises(dl.InputError, match=r"`y0` is not a state of .*step.init"):
            dl.iterate(step, model, 0.01, 2, batch)
        with pytest.raises(dl.InputError, match=r"`y0` is not a state of"):
            dl.local_error(step, flow, model, 0.01, batch)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_flax_nnx_parameters_through_nnx_split():
    nnx = pytest.importorskip("flax.nnx")  # optional: runs where flax is installed

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(3, 8, param_dtype=jnp.float64, rngs=rngs)
            self.out = nnx.Linear(8, 1, param_dtype=jnp.float64, rngs=rngs)

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))

    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
    _, batch, _ = _model_problem()

    def nnx_loss(params, batch):
        inputs, targets = batch
        return jnp.mean((nnx.merge(graphdef, params)(inputs) - targets) ** 2)

    h = 0.05
    modified = dl.ModifiedFlow(dl.GradientDescent(nnx_loss), h, 1)(0.0, params, batch)
    flat, unravel = ravel_pytree(params)
    flat_loss = lambda u, b: nnx_loss(unravel(u), b)
    g = jax.grad(flat_loss)(flat, batch)
    expected = -g - 0.5 * h * jax.hessian(flat_loss)(flat, batch) @ g
    np.testing.assert_allclose(ravel_pytree(modified)[0], expected, rtol=1e-12, atol=1e-14)


def _sharpness():
    flat, flat_loss, _ = _flat_problem()
    _, batch, _ = _model_problem()
    return float(jnp.linalg.eigvalsh(jax.hessian(flat_loss)(flat, batch))[-1])


def _assert_like_gradient_flow(field, model, loss, batch):
    """The field has the structure GradientFlow gives a model: `None` at the static leaves."""
    reference = dl.GradientFlow(loss)(0.0, model, batch)
    assert jax.tree_util.tree_structure(field) == jax.tree_util.tree_structure(reference)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_principal_flow_on_a_model(method):
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    h = 0.5 / _sharpness()
    field = dl.PrincipalFlow(loss, h, method, k=3)(0.0, model, batch)
    _assert_like_gradient_flow(field, model, loss, batch)
    expected = dl.PrincipalFlow(flat_loss, h, method, k=3)(0.0, flat, batch)
    assert helpers.relative_error(field, unravel(expected)) < 1e-12
    # A complex state (some h lambda > 1): the model's array leaves become complex.
    h = 1.5 / _sharpness()
    complex_model = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.complex128) if eqx.is_array(x) else x, model
    )
    field = dl.PrincipalFlow(loss, h, method, k=3)(0.0, complex_model, batch)
    expected = dl.PrincipalFlow(flat_loss, h, method, k=3)(0.0, flat.astype(jnp.complex128), batch)
    assert helpers.relative_error(field, unravel(expected)) < 1e-12


@pytest.mark.slow
def test_central_flow_on_a_model():
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    h = 2.5 / _sharpness()  # beyond the edge of stability: the SDCP term is active
    flow, flat_flow = dl.CentralFlow(loss, h), dl.CentralFlow(flat_loss, h)
    field = flow(0.0, model, batch)
    _assert_like_gradient_flow(field, model, loss, batch)
    expected = flat_flow(0.0, flat, batch)
    gradient = jax.grad(flat_loss)(flat, batch)
    assert helpers.relative_error(expected, -gradient) > 1e-3
    assert helpers.relative_error(field, unravel(expected)) < 1e-12


@pytest.mark.slow
def test_central_flow_integrate_on_a_model():
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    h = 2.5 / _sharpness()
    flow, flat_flow = dl.CentralFlow(loss, h), dl.CentralFlow(flat_loss, h)
    ys, quantities = flow.integrate(model, 2, batch, substeps=2)
    flat_ys, flat_quantities = flat_flow.integrate(flat, 2, batch, substeps=2)
    assert ys.activation is model.activation
    last = jax.tree_util.tree_map(lambda x: x[-1], _arrays(ys))
    assert helpers.relative_error(last, unravel(flat_ys[-1])) < 1e-12
    assert helpers.relative_error(quantities.velocity, flat_quantities.velocity) < 1e-12


@pytest.mark.slow
def test_sme_on_a_model():
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    sme = dl.StochasticModifiedEquation(loss, batch, 0.1, order=2, batch_size=4, examples=True)
    flat_sme = dl.StochasticModifiedEquation(
        flat_loss, batch, 0.1, order=2, batch_size=4, examples=True
    )
    drift = sme(0.0, model)
    _assert_like_gradient_flow(drift, model, loss, batch)
    assert helpers.relative_error(drift, unravel(flat_sme(0.0, flat))) < 1e-12
    assert abs(sme.modified_loss(model) - flat_sme.modified_loss(flat)) < 1e-12 * abs(
        flat_sme.modified_loss(flat)
    )
    dw = jr.normal(jr.key(2), (sme.num_noise,), jnp.float64)
    noise = sme.noise(0.0, model, None, dw)
    assert helpers.relative_error(noise, unravel(flat_sme.noise(0.0, flat, None, dw))) < 1e-12
    diffusion = _arrays(sme.diffusion(0.0, model))
    flat_diffusion = flat_sme.diffusion(0.0, flat)
    assert (
        helpers.relative_error(
            ravel_pytree(jax.tree_util.tree_map(lambda g: g @ dw, diffusion))[0],
            flat_diffusion @ dw,
        )
        < 1e-12
    )


@pytest.mark.slow
def test_corrected_field_on_a_model():
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    h = 0.05
    corrected = dl.CorrectedField(dl.GradientDescent(loss), h, 2)
    flat_corrected = dl.CorrectedField(dl.GradientDescent(flat_loss), h, 2)
    field = corrected(0.0, model, batch)
    _assert_like_gradient_flow(field, model, loss, batch)
    assert helpers.relative_error(field, unravel(flat_corrected(0.0, flat, batch))) < 1e-12
    # Driving the map with the field: one step on the model is one step on the flat problem.
    stepped = corrected.driven_map()(corrected.driven_map().init(model, batch), h, batch)
    flat_stepped = flat_corrected.driven_map()(
        flat_corrected.driven_map().init(flat, batch), h, batch
    )
    parameters = _arrays(corrected.driven_map().parameters(stepped))
    flat_parameters = flat_corrected.driven_map().parameters(flat_stepped)
    assert helpers.relative_error(parameters, unravel(flat_parameters)) < 1e-12


@pytest.mark.slow
def test_modified_losses_on_a_model():
    # Each modified loss on the model equals the one on the flat problem (both measured
    # from the origin), and the corrected loss's gradient is minus its field there too.
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    h = 0.05
    modified = dl.ModifiedFlow(dl.GradientDescent(loss), h, 1).modified_loss(model, batch)
    flat_modified = dl.ModifiedFlow(dl.GradientDescent(flat_loss), h, 1)
    assert abs(modified - flat_modified.modified_loss(flat, batch)) < 1e-12 * abs(modified)
    corrected = dl.CorrectedField(dl.GradientDescent(loss), h, 1)
    flat_corrected = dl.CorrectedField(dl.GradientDescent(flat_loss), h, 1)
    value, gradient = eqx.filter_value_and_grad(corrected.modified_loss)(model, batch)
    assert abs(value - flat_corrected.modified_loss(flat, batch)) < 1e-12 * abs(value)
    field = flat_corrected(0.0, flat, batch)
    assert helpers.relative_error(_arrays(gradient), unravel(-field)) < 1e-12


@pytest.mark.parametrize("flow_class", [dl.SimultaneousGameFlow, dl.AlternatingGameFlow])
def test_game_flows_with_model_players(flow_class):
    # Two MLP players against the same game on their ravelled array leaves.
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()

    def coupling(first, second):
        return jnp.mean(jax.vmap(first)(batch[0]) * jax.vmap(second)(batch[0]))

    def loss_phi(players, data):
        phi, theta = players
        return loss(phi, data) + coupling(phi, theta)

    def loss_theta(players, data):
        return -loss_phi(players, data)

    _, static = eqx.partition(model, eqx.is_array)
    as_models = lambda pair: tuple(eqx.combine(unravel(u), static) for u in pair)
    flat_phi = lambda pair, data: loss_phi(as_models(pair), data)
    flat_theta = lambda pair, data: loss_theta(as_models(pair), data)
    other = 0.5 * flat[::-1]
    h, alpha, lam = 0.1, 1.0, 0.5
    field = flow_class(loss_phi, loss_theta, h, alpha, lam)(0.0, as_models((flat, other)), batch)
    expected = flow_class(flat_phi, flat_theta, h, alpha, lam)(0.0, (flat, other), batch)
    for player, flat_player in zip(field, expected):
        assert helpers.relative_error(_arrays(player), unravel(flat_player)) < 1e-12


@pytest.mark.slow
def test_sme_sample_path_on_a_model():
    model, batch, loss = _model_problem()
    flat, flat_loss, unravel = _flat_problem()
    sme = dl.StochasticModifiedEquation(loss, batch, 0.1, batch_size=4, examples=True)
    flat_sme = dl.StochasticModifiedEquation(flat_loss, batch, 0.1, batch_size=4, examples=True)
    end = sme.solve(model, 0.4, key=jr.key(3), dt=0.1)
    assert end.activation is model.activation
    flat_end = flat_sme.solve(flat, 0.4, key=jr.key(3), dt=0.1)
    assert helpers.relative_error(_arrays(end), unravel(flat_end)) < 1e-12
    assert helpers.relative_error(flat_end, flat) > 1e-3  # it moved


def _phi(params):
    """A test function that reads a model and its ravelled copy alike: two parameters."""
    return dl._tree.ravel(params)[0][:2]


def _random_sgd(loss):
    return dl.integrators.RandomBatchSGD(loss, batch_size=4, examples=True)


def _sme(loss, batch):
    return lambda h: dl.StochasticModifiedEquation.of(_random_sgd(loss), batch, h, 1)


#: Every public measurement, as `(params, loss, batch) -> numbers`. Each runs on the model
#: and on its ravelled copy (`_flat_problem`), an independent route to the same numbers.
_MEASUREMENTS = {
    "local_error": lambda p, loss, b: (
        dl.local_error(dl.GradientDescent(loss), dl.IGRFlow(loss, 0.05), p, 0.05, b).error
    ),
    "global_error": lambda p, loss, b: (
        dl.global_error(dl.GradientDescent(loss), dl.IGRFlow(loss, 0.05), p, 0.05, 0.1, b).error
    ),
    "drift": lambda p, loss, b: (
        dl.analysis.drift(dl.GradientDescent(loss), dl.IGRFlow(loss, 0.05), p, 0.05, 2, b).errors
    ),
    "order_of_accuracy": lambda p, loss, b: (
        dl.order_of_accuracy(
            dl.GradientDescent(loss),
            lambda h: dl.GradientFlow(loss),
            p,
            [0.05, 0.1, 0.2],
            "local",
            b,
        ).errors
    ),
    "distance_to_time_average": lambda p, loss, b: (
        dl.analysis.distance_to_time_average(
            dl.GradientDescent(loss), dl.GradientFlow(loss), p, 0.05, 4, b, width=1, kernel="window"
        ).distance
    ),
    "weak_error": lambda p, loss, b: (
        dl.weak_error(
            _random_sgd(loss), _sme(loss, b)(0.1), p, 0.1, 0.2, _phi, 4, jr.key(0)
        ).sgd_expectation
    ),
    "weak_order_of_accuracy": lambda p, loss, b: (
        dl.weak_order_of_accuracy(
            _random_sgd(loss),
            _sme(loss, b),
            p,
            [0.1, 0.2, 0.4],
            0.4,
            _phi,
            4,
            jr.key(0),
            strict=False,
        ).errors
    ),
    "hessian_eigenpairs": lambda p, loss, b: (
        dl.hessian_eigenpairs(loss, p, b, k=2, method="lanczos").eigenvalues
    ),
    "lambda_max": lambda p, loss, b: dl.lambda_max(loss, p, b),
    "stability_index": lambda p, loss, b: dl.stability_index(dl.GradientDescent(loss), p, 0.05, b),
    "is_gradient_field": lambda p, loss, b: (
        dl.is_gradient_field(dl.IGRFlow(loss, 0.05), p, b, key=jr.key(0)).symmetric_norm
    ),
    "boundary_layer": lambda p, loss, b: (
        dl.boundary_layer(
            dl.GradientDescent(loss), lambda h: dl.IGRFlow(loss, h), p, [0.05, 0.1, 0.2], 2, b
        ).defects
    ),
    "batch_sharpness": lambda p, loss, b: dl.analysis.batch_sharpness(
        loss, p, jax.tree.map(lambda x: x.reshape(4, 4, -1), b)
    ),
    "preconditioned_eigenpairs": lambda p, loss, b: (
        dl.analysis.preconditioned_eigenpairs(
            loss, p, jax.tree.map(lambda x: 2.0 + jnp.abs(x), eqx.filter(p, eqx.is_array)), b
        ).eigenvalues
    ),
    "scaling_rule_error": lambda p, loss, b: (
        dl.analysis.scaling_rule_error(
            optax.sgd,
            {"learning_rate": 0.05},
            dl.analysis.LinearScalingRule(),
            loss,
            p,
            b,
            batch_size=2,
            num_steps=4,
            ks=[2],
            test_fn=_phi,
            num_samples=4,
            key=jr.key(0),
            examples=True,
        ).errors
    ),
}
#: Public names of `driftlab.analysis` that are not measurements on a parameter PyTree: result
#: types, averaging helpers, the exact moments of quadratic units (matrices, not a model) and
#: the adaptive methods' stability threshold (a number of h).
_NOT_ON_PARAMETERS = {
    "averaging_weights",
    "time_average",
    "sgd_moments",
    "sme_moments",
    "momentum_moments",
    "preconditioned_stability_threshold",
}


def test_every_measurement_is_listed():
    functions = {
        name
        for name in dir(dl.analysis)
        if not name.startswith("_")
        and not isinstance(getattr(dl.analysis, name), type)
        and callable(getattr(dl.analysis, name))
    }
    assert functions - _NOT_ON_PARAMETERS == set(_MEASUREMENTS)


#: Compile-heavy on a model (3-12 s each): the quick subset keeps the cheapest, which share
#: the same model plumbing (static leaves kept out of jit, vmap and loops).
_SLOW_ON_A_MODEL = {
    "boundary_layer",
    "distance_to_time_average",
    "drift",
    "global_error",
    "hessian_eigenpairs",
    "is_gradient_field",
    "lambda_max",
    "local_error",
    "order_of_accuracy",
    "preconditioned_eigenpairs",
    "scaling_rule_error",
    "weak_error",
    "weak_order_of_accuracy",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_ON_A_MODEL else name
        for name in sorted(_MEASUREMENTS)
    ],
)
def test_every_measurement_on_a_model(name):
    model, batch, loss = _model_problem()
    flat, flat_loss, _ = _flat_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.RoundoffWarning)  # tiny samples: floors are high
        on_model = np.asarray(_MEASUREMENTS[name](model, loss, batch), dtype=np.float64)
        on_flat = np.asarray(_MEASUREMENTS[name](flat, flat_loss, batch), dtype=np.float64)
    assert np.all(np.isfinite(on_model))
    np.testing.assert_allclose(on_model, on_flat, rtol=1e-8, atol=1e-14)
