"""ModifiedFlow: automatic backward error analysis of any one-step map (issue 5)."""

import math
import re

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from jax.experimental import jet
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab._registry import FLOWS
from driftlab.analysis._order import fit_slope

from . import helpers


@eqx.filter_jit
def _coefficients(flow, y, args):
    return flow.coefficients(y, args)


# --- exact coefficients -------------------------------------------------------------------


def test_gd_quadratic_coefficients_to_order_6():
    problem = helpers.small_quadratic(4)
    a, y = np.asarray(problem.A), problem.params
    flow = dl.ModifiedFlow(dl.GradientDescent(problem.loss), 0.1, 6)
    for k, coefficient in enumerate(_coefficients(flow, y, problem.data)):
        expected = -np.linalg.matrix_power(a, k + 1) @ np.asarray(y) / (k + 1)
        assert helpers.relative_error(coefficient, expected) < 1e-10  # measured <= 2e-14


def test_euler_on_y_squared():
    flow = dl.ModifiedFlow(dl.ExplicitEuler(lambda y, args: y**2), 0.1, 5)
    expected = [1.0, -1.0, 3 / 2, -8 / 3, 31 / 6, -157 / 15]
    coefficients = _coefficients(flow, jnp.asarray(1.0), None)
    for coefficient, value in zip(coefficients, expected):
        assert abs(float(coefficient) - value) < 1e-10 * abs(value)  # measured <= 2e-14


def test_gd_order_1_is_igr_on_mlp():
    problem = helpers.small_mlp()
    h = 0.3
    modified = eqx.filter_jit(
        lambda y: dl.ModifiedFlow(dl.GradientDescent(problem.loss), h, 1)(0.0, y, problem.data)
    )
    igr = dl.IGRFlow(problem.loss, h)(0.0, problem.params, problem.data)
    assert helpers.relative_error(modified(problem.params), igr) < 1e-12  # measured 3e-16


class _GenericGD(dl.AbstractStepMap):
    """Gradient descent written as a plain map, so `ModifiedFlow` takes its generic route."""

    loss: object

    def __call__(self, y, h, args):
        return jax.tree_util.tree_map(lambda p, g: p - h * g, y, jax.grad(self.loss)(y, args))


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_euler_route_matches_generic_route_on_mlp(order):
    # The AbstractEulerStepMap route (jets of G one order lower, one linearisation at
    # order 1) must give the generic route's coefficients: a third-derivative-rich check.
    problem = helpers.small_mlp()
    euler = _coefficients(
        dl.ModifiedFlow(dl.GradientDescent(problem.loss), 0.1, order), problem.params, problem.data
    )
    generic = _coefficients(
        dl.ModifiedFlow(_GenericGD(problem.loss), 0.1, order), problem.params, problem.data
    )
    assert len(euler) == order + 1
    for a, b in zip(euler, generic):
        assert helpers.relative_error(a, b) < 1e-12  # measured <= 1.1e-15


def _slow_root_coefficients(a, y, beta, num):
    """[h^(k+1)] of log r(h A) y, r the slow root of r^2 - (1 + beta - h lam) r + beta."""
    lam, vectors = np.linalg.eigh(a)
    zero = jnp.zeros(())

    def log_root(h, l):
        b = 1 + beta - h * l
        return jnp.log((b + jnp.sqrt(b * b - 4 * beta)) / 2)

    terms = []
    for l in lam:
        _, series = jet.jet(lambda h: log_root(h, l), (zero,), ([1.0] + [0.0] * (num - 1),))
        terms.append([float(s) / math.factorial(m + 1) for m, s in enumerate(series)])
    terms = np.array(terms)
    return [vectors @ (terms[:, k] * (vectors.T @ np.asarray(y))) for k in range(num)]


def test_heavy_ball_slow_flow_is_exact_slow_root():
    problem = helpers.small_quadratic(4)
    beta = 0.5
    flow = dl.ModifiedFlow(dl.HeavyBall(problem.loss, beta), 0.02, 4)
    coefficients = _coefficients(flow, problem.params, problem.data)
    exact = _slow_root_coefficients(np.asarray(problem.A), problem.params, beta, 5)
    for coefficient, expected in zip(coefficients, exact):
        assert helpers.relative_error(coefficient, expected) < 1e-10  # measured <= 7e-15
    # First order against formulas.md (Kovachki & Stuart; Ghosh et al.).
    a, y = np.asarray(problem.A), np.asarray(problem.params)
    first = -(a @ y + 0.02 * (1 + beta) / (2 * (1 - beta) ** 2) * a @ a @ y) / (1 - beta)
    truncated = np.asarray(coefficients[0]) + 0.02 * np.asarray(coefficients[1])
    assert np.linalg.norm(truncated - first) < 1e-12 * np.linalg.norm(first)


def test_slow_state_momentum_is_invariant():
    """One heavy-ball step from the slow state lands on the slow state, to O(h^(p+1))."""
    problem = helpers.small_quadratic(4)
    step = dl.HeavyBall(problem.loss, 0.5)
    errors = []
    for h in (0.005, 0.01):
        flow = dl.ModifiedFlow(step, h, 2)
        state = flow.slow_state(problem.params, problem.data)
        moved = step(state, h, problem.data)
        again = flow.slow_state(moved.params, problem.data)
        errors.append(float(jnp.linalg.norm(moved.momentum - again.momentum)))
    assert 2.5 < math.log2(errors[1] / errors[0]) < 3.5  # O(h^3): measured 3.0


# --- linear maps against the matrix logarithm ----------------------------------------------


def _games():
    loss_phi, loss_theta = dl.problems.bilinear_game_losses()
    out = []
    for regularisation in (0.0, 0.3):
        problem = dl.problems.bilinear_game(2, regularisation=regularisation, seed=1)
        for make in (dl.SimultaneousGD, dl.AlternatingGD):
            out.append((make(loss_phi, loss_theta, 1.0, 0.5), problem.params, problem.data))
    return out


def _linear_cases():
    problem = helpers.small_quadratic(4)
    _, batches = dl.problems.quadratic_batches(3, 3, seed=2, linear_terms=True)
    epoch_y = jnp.asarray(np.random.default_rng(3).standard_normal(3))
    return [
        (dl.GradientDescent(problem.loss), problem.params, problem.data),
        (dl.SGDEpoch(dl.problems.quadratic_loss), epoch_y, batches),
    ] + _games()


@pytest.mark.parametrize("case", range(6))
def test_linear_maps_agree_with_logm(case):
    step, y, args = _linear_cases()[case]
    flat, unravel = ravel_pytree(y)
    affine = lambda x, h: ravel_pytree(step(unravel(x), h, args))[0]
    hs = [0.01, 0.02, 0.04]
    for order in (0, 1, 2):
        errors = []
        for h in hs:
            # M(h) column by column (the map is affine: y -> M y + c; augment by one).
            m = np.asarray(jax.jacfwd(affine)(flat, h))
            c = np.asarray(affine(jnp.zeros_like(flat), h))
            n = flat.size
            augmented = np.block([[m, c[:, None]], [np.zeros((1, n)), np.ones((1, 1))]])
            tau = float(step.duration(h, args))
            exact = (scipy.linalg.logm(augmented).real / tau) @ np.append(np.asarray(flat), 1.0)
            flow = dl.ModifiedFlow(step, h, order)
            field = ravel_pytree(eqx.filter_jit(flow)(0.0, y, args))[0]
            errors.append(np.linalg.norm(np.asarray(field) - exact[:n]))
        slope = fit_slope(np.array(hs), np.array(errors), np.ones(3, bool))[0]
        assert abs(slope - (order + 1)) < 0.2, (order, errors, slope)


# --- measured orders on the MLP on digits ---------------------------------------------------


def _orders(step, y0, args, local_hs, global_hs, t_end, *, local_orders, global_orders):
    for order in local_orders:
        estimate = dl.order_of_accuracy(
            step,
            lambda h: dl.ModifiedFlow(step, h, order),
            y0,
            local_hs,
            "local",
            args,
            check_stability=False,
        )
        assert estimate.agrees(0.25), estimate
        if order in global_orders:
            estimate = dl.order_of_accuracy(
                step,
                lambda h: dl.ModifiedFlow(step, h, order),
                y0,
                global_hs,
                "global",
                args,
                t_end=t_end,
                check_stability=False,
            )
            assert estimate.agrees(0.25), estimate


@pytest.mark.slow
def test_orders_gd_mlp():
    problem = helpers.small_mlp()
    step = dl.GradientDescent(problem.loss)
    _orders(
        step,
        problem.params,
        problem.data,
        [0.1, 0.2, 0.4],
        [0.025, 0.05, 0.1],  # global p = 3 is pre-asymptotic above h = 0.1 (slope 3.66)
        1.6,
        local_orders=range(5),
        global_orders=range(4),
    )


@pytest.mark.slow
def test_orders_sgd_epoch_mlp():
    problem = helpers.small_mlp()
    step = dl.SGDEpoch(problem.loss)
    _orders(
        step,
        problem.params,
        problem.batches(2),
        [0.05, 0.1, 0.2],
        [0.025, 0.05, 0.1],
        1.6,
        # A subset keeps the suite fast; every order is compiled anew (about 10 s each).
        local_orders=(0, 2, 4),
        global_orders=(0, 2),
    )


@pytest.mark.slow
def test_orders_simultaneous_game():
    loss_phi, loss_theta = dl.problems.bilinear_game_losses()
    problem = dl.problems.bilinear_game(2, regularisation=0.3, seed=0)
    step = dl.SimultaneousGD(loss_phi, loss_theta, 1.0, 0.5)
    _orders(
        step,
        problem.params,
        problem.data,
        [0.1, 0.2, 0.4],
        [0.1, 0.2, 0.4],
        1.6,
        local_orders=range(5),
        global_orders=range(4),
    )


@pytest.mark.slow
def test_orders_heavy_ball_mlp():
    problem = helpers.small_mlp()
    step = dl.HeavyBall(problem.loss, 0.5)
    # order_of_accuracy starts the map on each flow's slow manifold (flow.slow_state).
    hs = [0.008, 0.016, 0.032]  # h lambda_max < (1 - sqrt(beta))^2: a slow manifold exists
    _orders(
        step,
        step.init(problem.params),
        problem.data,
        hs,
        hs,
        0.32,
        local_orders=(0, 1, 3),  # measured 1.99, 3.04, 5.14
        global_orders=(0, 1, 3),  # measured 1.00, 2.03, 4.06
    )


@pytest.mark.slow
def test_orders_adam_mlp():
    problem = helpers.small_mlp()
    step = dl.Adam(
        problem.loss, b1=0.5, b2=0.7, eps=1e-2, bias_correction=False, eps_inside_sqrt=True
    )
    hs = [0.0025, 0.005, 0.01]
    _orders(
        step,
        step.init(problem.params),
        problem.data,
        hs,
        hs,
        0.04,
        local_orders=(0, 1),
        global_orders=(1,),
    )


# --- gradient structure and modified losses -------------------------------------------------


@pytest.mark.slow
def test_gradient_structure():
    problem = helpers.small_mlp()
    gd = dl.ModifiedFlow(dl.GradientDescent(problem.loss), 0.1, 2)
    structure = dl.is_gradient_field(gd, problem.params, problem.data, num_probes=2)
    # f_0 = -g and f_1 = -grad ||g||^2 / 4 are gradients; f_2 = -T[g, g]/12 - H^2 g/3 is
    # not on a non-quadratic loss: its Jacobian's antisymmetric part is
    # (T[u, Hv, g] - T[Hu, v, g]) / 6 (measured relative asymmetry 0.2 here).
    assert max(structure.coefficient_asymmetry[:2]) < 1e-10, structure
    assert structure.coefficient_asymmetry[2] > 1e-3 and not structure.is_gradient
    step, y, args = _games()[0]  # simultaneous GD, bilinear: rotational already at f_0
    game = dl.is_gradient_field(dl.ModifiedFlow(step, 0.1, 1), y, args)
    assert not game.is_gradient and game.coefficient_asymmetry[0] > 0.5
    # Exact-batch SGD: f_0 is a gradient, f_1 is not (formulas.md).
    epoch = dl.ModifiedFlow(dl.SGDEpoch(dl.problems.quadratic_loss), 0.1, 1)
    _, batches = dl.problems.quadratic_batches(3, 3, seed=2, linear_terms=True)
    sgd = dl.is_gradient_field(epoch, jnp.ones(3), batches)
    assert sgd.coefficient_asymmetry[0] < 1e-12 < 1e-3 < sgd.coefficient_asymmetry[1]
    with pytest.raises(dl.InputError, match="not a gradient field"):
        dl.ModifiedFlow(step, 0.1, 1).modified_loss(y, args)


@pytest.mark.slow
def test_modified_loss():
    problem = helpers.small_quadratic(4)
    h, y = 0.1, problem.params
    flow = dl.ModifiedFlow(dl.GradientDescent(problem.loss), h, 1)
    expected = dl.IGRFlow(problem.loss, h).modified_loss(y, problem.data)
    assert abs(float(flow.modified_loss(y, problem.data)) - float(expected)) < 1e-13
    mlp = helpers.small_mlp()
    flow = dl.ModifiedFlow(dl.GradientDescent(mlp.loss), h, 1)
    reference = jax.tree_util.tree_map(lambda x: 0.5 * x, mlp.params)
    igr = dl.IGRFlow(mlp.loss, h)
    expected = igr.modified_loss(mlp.params, mlp.data) - igr.modified_loss(reference, mlp.data)
    value = flow.modified_loss(mlp.params, mlp.data, reference=reference)
    assert abs(float(value) - float(expected)) < 1e-10 * abs(float(expected))


# --- validation ------------------------------------------------------------------------------


def test_input_errors():
    problem = helpers.small_quadratic(4)
    with pytest.raises(dl.InputError, match="`order`"):
        dl.ModifiedFlow(dl.GradientDescent(problem.loss), 0.1, -1)
    with pytest.raises(dl.InputError, match="`step_map`"):
        dl.ModifiedFlow(lambda y, h, args: y, 0.1, 1)
    flow = dl.ModifiedFlow(dl.HeavyBall(problem.loss, 0.5), 0.2, 1)  # h lambda_max = 0.2 > 0.086
    with pytest.warns(dl.StabilityWarning, match="no real slow manifold"):
        flow.slow_state(problem.params, problem.data)
    registry_flow = FLOWS["modified"](problem, dl.GradientDescent(problem.loss), 0.1, 2)
    assert isinstance(registry_flow, dl.ModifiedFlow) and registry_flow.order == 2


# --- property tests ----------------------------------------------------------------------------


@hypothesis.given(
    seed=st.integers(0, 2**16),
    h=st.floats(0.01, 0.3),
    order=st.integers(0, 3),
)
@hypothesis.settings(deadline=None, max_examples=10)
def test_property_random_quadratics(seed, h, order):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((3, 3))
    a = q @ q.T / 3 + 0.05 * np.eye(3)
    data = {"A": jnp.asarray(a), "b": jnp.zeros(3)}
    y = jnp.asarray(rng.standard_normal(3))
    flow = dl.ModifiedFlow(dl.GradientDescent(dl.problems.quadratic_loss), h, order)
    for k, coefficient in enumerate(_coefficients(flow, y, data)):
        expected = -np.linalg.matrix_power(a, k + 1) @ np.asarray(y) / (k + 1)
        assert helpers.relative_error(coefficient, expected) < 1e-10


def _tiny_net_loss(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["W1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


@pytest.mark.slow
@hypothesis.given(seed=st.integers(0, 2**16), h=st.floats(0.01, 0.5))
@hypothesis.settings(deadline=None, max_examples=10)
def test_property_random_networks(seed, h):
    """Order 1 is IGR, and f_2 = -1/12 T[g, g] - 1/3 H^2 g, on random tiny tanh networks."""
    keys = jax.random.split(jax.random.key(seed), 4)
    params = {
        "W1": jax.random.normal(keys[0], (3, 4)),
        "b1": jax.random.normal(keys[1], (4,)),
        "w2": jax.random.normal(keys[2], (4,)),
    }
    batch = {"x": jax.random.normal(keys[3], (8, 3)), "y": jnp.linspace(-1.0, 1.0, 8)}
    coefficients = _coefficients(
        dl.ModifiedFlow(dl.GradientDescent(_tiny_net_loss), h, 2), params, batch
    )
    grad = lambda p: jax.grad(_tiny_net_loss)(p, batch)
    hvp = lambda v: jax.jvp(grad, (params,), (v,))[1]
    g = grad(params)
    hg = hvp(g)
    t_gg = jax.jvp(lambda p: jax.jvp(grad, (p,), (g,))[1], (params,), (g,))[1]
    expected = [
        jax.tree_util.tree_map(jnp.negative, g),
        jax.tree_util.tree_map(lambda x: -0.5 * x, hg),
        jax.tree_util.tree_map(lambda t, x: -t / 12 - x / 3, t_gg, hvp(hg)),
    ]
    for coefficient, exact in zip(coefficients, expected):
        assert helpers.relative_error(coefficient, exact) < 1e-10


def test_an_order_that_cannot_compile_is_refused_quickly_naming_one_that_can():
    # Order 100 of GD on a model ran 9 CPU minutes and reached 16.5 GB before (issue 28);
    # now one trace at order 2 decides, before anything is expanded.
    model = eqx.nn.MLP(2, 1, 8, 1, activation=jax.nn.tanh, key=jr.key(0))
    xs = jr.normal(jr.key(1), (8, 2), jnp.float64)
    loss = lambda m, b: jnp.mean((jax.vmap(m)(b[0]) - b[1]) ** 2)
    batch, step = (xs, jnp.sin(xs.sum(axis=1, keepdims=True))), dl.GradientDescent(loss)
    with pytest.raises(dl.InputError, match=r"`order`=100 .* the largest order that fits") as info:
        dl.ModifiedFlow(step, 0.1, order=100).coefficients(model, batch)
    largest = int(re.search(r"the largest order that fits here is (\d+)", str(info.value))[1])
    assert 8 <= largest < 100
    dl.ModifiedFlow(step, 0.1, order=largest).check_order_fits(model, batch)
    with pytest.raises(dl.InputError, match="`order`"):
        dl.ModifiedFlow(step, 0.1, order=largest + 1).check_order_fits(model, batch)
