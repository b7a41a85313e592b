"""Every step map against a hand-written update, and against optax where optax has it."""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

import driftlab as dl

from .helpers import small_mlp, tree_allclose


H = 0.05


def _grad(problem, params, batch=None):
    return jax.grad(problem.loss)(params, problem.data if batch is None else batch)


def test_gradient_descent_is_a_hand_written_step():
    problem = small_mlp()
    expected = jtu.tree_map(lambda p, g: p - H * g, problem.params, _grad(problem, problem.params))
    assert tree_allclose(
        dl.GradientDescent(problem.loss)(problem.params, H, problem.data), expected
    )


def test_sgd_epoch_applies_the_batches_in_the_given_order():
    problem = small_mlp()
    batches = problem.batches(4, seed=1)
    params = problem.params
    for k in range(4):
        batch = jtu.tree_map(lambda x: x[k], batches)
        params = dl.SGD(problem.loss)(params, H, batch)
    epoch = dl.SGDEpoch(problem.loss)
    assert tree_allclose(epoch(problem.params, H, batches), params)
    assert epoch.duration(H, batches) == pytest.approx(4 * H)
    reversed_batches = jtu.tree_map(lambda x: x[::-1], batches)
    assert not tree_allclose(epoch(problem.params, H, reversed_batches), params)


def _run_optax(optimiser, problem, n):
    params, state = problem.params, optimiser.init(problem.params)
    for _ in range(n):
        updates, state = optimiser.update(_grad(problem, params), state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    "step_map, optimiser",
    [
        (lambda loss: dl.HeavyBall(loss, 0.9), optax.sgd(H, momentum=0.9)),
        (lambda loss: dl.Nesterov(loss, 0.9), optax.sgd(H, momentum=0.9, nesterov=True)),
        (lambda loss: dl.Adam(loss, 0.9, 0.99, 1e-8), optax.adam(H, 0.9, 0.99, 1e-8)),
        (lambda loss: dl.RMSProp(loss, 0.9, 1e-8), optax.rmsprop(H, 0.9, 1e-8)),
        (lambda loss: dl.OptaxStepMap(loss, lambda h: optax.adam(h)), optax.adam(H)),
    ],
    ids=["heavy-ball", "nesterov", "adam", "rmsprop", "optax-adapter"],
)
def test_stateful_maps_match_optax(step_map, optimiser):
    problem = small_mlp()
    step = step_map(problem.loss)
    ys = dl.iterate(step, step.init(problem.params), H, 5, problem.data)
    final = step.parameters(jtu.tree_map(lambda leaf: leaf[-1], ys))
    assert tree_allclose(final, _run_optax(optimiser, problem, 5), rtol=1e-10, atol=1e-12)


def test_heavy_ball_is_polyak_momentum():
    """theta_{n+1} = theta_n - h g(theta_n) + beta (theta_n - theta_{n-1})."""
    problem, beta = small_mlp(), 0.7
    step = dl.HeavyBall(problem.loss, beta)
    ys = dl.iterate(step, step.init(problem.params), H, 3, problem.data).params
    thetas = [jtu.tree_map(lambda leaf: leaf[k], ys) for k in range(4)]
    expected = jtu.tree_map(
        lambda t2, t1, g: t2 - H * g + beta * (t2 - t1),
        thetas[2],
        thetas[1],
        _grad(problem, thetas[2]),
    )
    assert tree_allclose(thetas[3], expected)


def test_adam_conventions_differ_where_they_should():
    problem = small_mlp()
    outside = dl.Adam(problem.loss, eps=1e-2, bias_correction=False)
    inside = dl.Adam(problem.loss, eps=1e-2, bias_correction=False, eps_inside_sqrt=True)
    y0 = outside.init(problem.params)
    assert y0.count is None
    grad = _grad(problem, problem.params)
    nu = jtu.tree_map(lambda g: 0.001 * g**2, grad)
    expected = jtu.tree_map(
        lambda p, g, v: p - H * 0.1 * g / jnp.sqrt(v + 1e-2), problem.params, grad, nu
    )
    assert tree_allclose(inside(y0, H, problem.data).params, expected)
    assert not tree_allclose(outside(y0, H, problem.data).params, expected)


def _game():
    problem = dl.problems.bilinear_game(3, regularisation=0.1, seed=2)
    return problem, *dl.problems.bilinear_game_losses()


def test_simultaneous_gd_moves_both_players_from_the_same_point():
    problem, loss_phi, loss_theta = _game()
    phi, theta = problem.params
    step = dl.SimultaneousGD(loss_phi, loss_theta, alpha=1.0, lam=2.0)
    new_phi, new_theta = step(problem.params, H, problem.data)
    g_phi = jax.grad(loss_phi)((phi, theta), problem.data)[0]
    g_theta = jax.grad(loss_theta)((phi, theta), problem.data)[1]
    np.testing.assert_allclose(new_phi, phi - H * g_phi, rtol=1e-14)
    np.testing.assert_allclose(new_theta, theta - 2 * H * g_theta, rtol=1e-14)


def test_alternating_gd_moves_the_second_player_from_the_new_first():
    problem, loss_phi, loss_theta = _game()
    phi, theta = problem.params
    step = dl.AlternatingGD(loss_phi, loss_theta, alpha=0.5, lam=1.0)
    new_phi, new_theta = step(problem.params, H, problem.data)
    expected_phi = phi - 0.5 * H * jax.grad(loss_phi)((phi, theta), problem.data)[0]
    g_theta = jax.grad(loss_theta)((expected_phi, theta), problem.data)[1]
    np.testing.assert_allclose(new_phi, expected_phi, rtol=1e-14)
    np.testing.assert_allclose(new_theta, theta - H * g_theta, rtol=1e-14)


def test_iterate_stacks_every_iterate_and_keeps_structure():
    problem = small_mlp()
    step = dl.GradientDescent(problem.loss)
    ys = dl.iterate(step, problem.params, H, 3, problem.data)
    assert jtu.tree_structure(ys) == jtu.tree_structure(problem.params)
    assert all(leaf.shape[0] == 4 and leaf.dtype == jnp.float64 for leaf in jtu.tree_leaves(ys))
    second = step(step(problem.params, H, problem.data), H, problem.data)
    assert tree_allclose(jtu.tree_map(lambda leaf: leaf[2], ys), second)
    last = dl.integrators.advance(step, problem.params, H, 3, problem.data)
    assert tree_allclose(jtu.tree_map(lambda leaf: leaf[3], ys), last)


def test_iterate_with_a_batch_per_step():
    problem = small_mlp()
    batches = problem.batches(3)
    ys = dl.iterate(dl.SGD(problem.loss), problem.params, H, 3, batches, args_per_step=True)
    epoch = dl.SGDEpoch(problem.loss)(problem.params, H, batches)
    assert tree_allclose(jtu.tree_map(lambda leaf: leaf[-1], ys), epoch)


@pytest.mark.parametrize("beta", [-0.1, 1.0])
def test_momentum_rejects_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match="`beta`"):
        dl.HeavyBall(lambda p, a: 0.0, beta)
