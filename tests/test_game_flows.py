"""Two-player game flows: logm on a quadratic game with unequal step sizes, ModifiedFlow, order."""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.flows import ModifiedFlow

from . import helpers
from .literature_helpers import error_ratio, linear_coefficients


ALPHA, LAM = 1.0, 0.4
FLOWS = {
    "simultaneous": (dl.SimultaneousGD, dl.SimultaneousGameFlow),
    "alternating": (dl.AlternatingGD, dl.AlternatingGameFlow),
}


@pytest.fixture(scope="module")
def game():
    problem = dl.problems.bilinear_game(3, regularisation=0.3, seed=0)
    loss_phi, loss_theta = dl.problems.bilinear_game_losses()
    return problem, loss_phi, loss_theta


def _own_step_size_convention(loss_phi, loss_theta, h, alpha, lam):
    """The released code's convention: both correction terms scaled by the player's own step."""

    def flow(t, y, args):
        del t
        fields = lambda z: (
            jtu.tree_map(lambda x: -x, jax.grad(loss_phi)(z, args)[0]),
            jtu.tree_map(lambda x: -x, jax.grad(loss_theta)(z, args)[1]),
        )
        f, g = fields(y)
        df = jax.jvp(fields, (y,), ((f, jnp.zeros_like(g)),))[1]  # (f_phi f, g_phi f)
        dg = jax.jvp(fields, (y,), ((jnp.zeros_like(f), g),))[1]  # (f_theta g, g_theta g)
        return (
            alpha * f - 0.5 * h * alpha**2 * (df[0] + dg[0]),
            lam * g - 0.5 * h * lam**2 * (df[1] + dg[1]),
        )

    return flow


@pytest.mark.parametrize("name", list(FLOWS))
def test_game_flows_match_matrix_logarithm_with_unequal_steps(game, name):
    problem, loss_phi, loss_theta = game
    make_map, make_flow = FLOWS[name]
    step = make_map(loss_phi, loss_theta, ALPHA, LAM)
    y, data = problem.params, problem.data
    flat, unravel = ravel_pytree(y)

    def exact_field(h):
        jacobian = jax.jacfwd(lambda u: ravel_pytree(step(unravel(u), h, data))[0])(flat)
        return scipy.linalg.logm(np.asarray(jacobian)).real / h @ np.asarray(flat)

    def error(flow_of_h):
        return lambda h: np.linalg.norm(
            ravel_pytree(flow_of_h(h)(0.0, y, data))[0] - exact_field(h)
        )

    # The order-1 flow is O(h^2) from (1/h) logm M(h): measured ratio 4.0.
    ratio = error_ratio(error(lambda h: make_flow(loss_phi, loss_theta, h, ALPHA, LAM)), 1e-2)
    assert 3.7 < ratio < 4.3
    if name == "simultaneous":
        # Scaling the cross term by the player's own step size is only O(h) with
        # alpha != lambda (measured ratio 2.0): formulas.md's convention is the right one.
        own = lambda h: _own_step_size_convention(loss_phi, loss_theta, h, ALPHA, LAM)
        assert 1.8 < error_ratio(error(own), 1e-2) < 2.2


@pytest.mark.parametrize("name", list(FLOWS))
def test_game_flows_agree_with_modified_flow(name):
    loss_phi, loss_theta = dl.problems.tanh_game_losses()
    make_map, make_flow = FLOWS[name]
    game = dl.problems.tanh_game()
    y, data = game.params, game.data
    automatic = ModifiedFlow(make_map(loss_phi, loss_theta, ALPHA, LAM), 0.1, order=1)
    automatic = automatic.coefficients(y, data)
    mine = linear_coefficients(lambda h: make_flow(loss_phi, loss_theta, h, ALPHA, LAM), y, data)
    for a, b in zip(mine, automatic):
        assert helpers.relative_error(a, b) < 1e-10


@pytest.mark.parametrize("name", list(FLOWS))
@pytest.mark.parametrize("kind", ["local", "global"])
def test_game_flow_orders(name, kind):
    loss_phi, loss_theta = dl.problems.tanh_game_losses()
    make_map, make_flow = FLOWS[name]
    game = dl.problems.tanh_game()
    estimate = dl.order_of_accuracy(
        make_map(loss_phi, loss_theta, ALPHA, LAM),
        lambda h: make_flow(loss_phi, loss_theta, h, ALPHA, LAM),
        game.params,
        [0.2, 0.1, 0.05],
        kind,
        game.data,
        t_end=1.0,
    )
    assert estimate.agrees(0.25), str(estimate)
