"""The drift-adjusted learning rate, the explicit regularisers, and the flow registry names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftlab as dl
import driftlab.testing as dt
from driftlab import _registry

from . import helpers


def _run(optimiser, loss, params, data, steps):
    state = optimiser.init(params)
    losses = []
    for _ in range(steps):
        grads = jax.grad(loss)(params, data)
        updates, state = optimiser.update(grads, state, params, args=data)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss(params, data)))
    return np.array(losses), state


@pytest.mark.slow
def test_dal_stays_stable_where_gd_diverges():
    # A quadratic with lambda_max = 10: GD at h = 0.25 (h lambda_max = 2.5) diverges.
    problem = dl.problems.quadratic(6, condition=100.0, lambda_max=10.0, seed=0)
    loss, params, data = problem.loss, problem.params, problem.data
    gd_losses, _ = _run(optax.sgd(0.25), loss, params, data, 60)
    assert gd_losses[-1] > 1e6 * float(loss(params, data))
    dal_losses, state = _run(dl.optim.drift_adjusted_learning_rate(loss), loss, params, data, 60)
    # Monotone on a quadratic: h_DAL = 2||g||/||Ag|| <= 2 g.g / g.Ag (Cauchy-Schwarz).
    assert np.all(np.diff(dal_losses) <= 0) and dal_losses[-1] < float(loss(params, data))
    # On the MLP, GD at h lambda_max = 8 ends above its initial loss (measured 2.27 -> 3.98);
    # DAL, inside optax.chain, trains (measured 2.32 -> 0.58).
    problem = helpers.small_mlp()
    loss, params, data = problem.loss, problem.params, problem.data
    h = 8.0 / dl.lambda_max(loss, params, data)
    gd_losses, _ = _run(optax.sgd(h), loss, params, data, 30)
    assert gd_losses[-1] > float(loss(params, data))
    dal = optax.chain(dl.optim.drift_adjusted_learning_rate(loss))
    dal_losses, state = _run(dal, loss, params, data, 30)
    assert np.all(np.isfinite(dal_losses)) and dal_losses[-1] < 0.5 * float(loss(params, data))
    assert 0 < float(state[0].learning_rate) <= 5.0


def test_dal_learning_rate_formula():
    a = jnp.diag(jnp.array([1.0, 4.0]))
    data = {"A": a, "b": jnp.zeros(2)}
    loss = dl.problems.quadratic_loss
    y = jnp.array([0.0, 1.0])  # g = (0, 4), an eigenvector: v = 4, h = 2 / 4
    transform = dl.optim.drift_adjusted_learning_rate(loss)
    grads = jax.grad(loss)(y, data)
    updates, state = transform.update(grads, transform.init(y), y, args=data)
    assert np.isclose(state.learning_rate, 0.5) and np.allclose(updates, -0.5 * grads)
    flat = dl.optim.drift_adjusted_learning_rate(loss, power=0.0)
    assert np.isclose(flat.update(grads, flat.init(y), y, args=data)[1].learning_rate, 2.0)
    capped = dl.optim.drift_adjusted_learning_rate(loss, max_learning_rate=0.1)
    assert np.isclose(capped.update(grads, capped.init(y), y, args=data)[1].learning_rate, 0.1)
    with pytest.raises(dl.InputError, match="params"):
        transform.update(grads, transform.init(y))
    with pytest.raises(dl.InputError, match="power"):
        dl.optim.drift_adjusted_learning_rate(loss, power=-1.0)


def test_igr_loss_is_trainable_and_matches_igr_flow():
    problem = helpers.small_mlp()
    regularised = dl.igr_loss(problem.loss, 0.1)
    gradient = jax.grad(regularised)(problem.params, problem.data)
    field = dl.IGRFlow(problem.loss, 0.1)(0.0, problem.params, problem.data)
    assert helpers.relative_error(jax.tree_util.tree_map(jnp.negative, gradient), field) < 1e-12


@pytest.mark.parametrize(
    "flow_name, optimiser_name, problem_name",
    [
        ("sgd", "sgd-epoch", "logistic"),
        ("exact-batch-sgd", "sgd-epoch", "logistic"),
        ("principal", "gd", "quadratic"),
        ("principal-lanczos", "gd", "quadratic"),
        ("simultaneous-game", "simultaneous-gd", "game"),
        ("alternating-game", "alternating-gd", "game"),
        ("heavy-ball", "heavy-ball", "quadratic"),
        ("adam", "adam", "quadratic"),
        ("rmsprop", "rmsprop", "quadratic"),
    ],
)
def test_registry_builds_each_flow(flow_name, optimiser_name, problem_name):
    problem = _registry.PROBLEMS[problem_name](seed=0)
    # Two batches keep the order-averaged epoch (the mean over every batch order) cheap.
    optimiser = _registry.OPTIMISERS[optimiser_name]
    hyper = {"num_batches": 2} if "num_batches" in optimiser.hyperparameters else {}
    step, y0, args = optimiser(problem, hyper)
    make_flow = lambda h: _registry.FLOWS[flow_name](problem, step, h, 1)
    # h = 0.01: inside heavy-ball's slow-manifold region, h lambda_max < (1 - sqrt(beta))^2.
    flow = make_flow(0.01)
    assert isinstance(flow, dl.AbstractFlow) and flow.order == 1
    out = flow(0.0, step.parameters(y0), args)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(step.parameters(y0))
    # Its values: f_0 and f_1 are the registry map's own (hyperparameters passed through), or,
    # for the SGD flow, the order-averaged epoch's (its antisymmetric term averages out).
    reference = dl.OrderAveragedSGDEpoch(problem.loss) if flow_name == "sgd" else step
    dt.assert_coefficients_match(make_flow, reference, 1, step.parameters(y0), args)
