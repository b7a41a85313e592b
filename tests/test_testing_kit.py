"""driftlab.testing: its strategies and guards, and driftlab's own flows property-tested with it.

The mutation checks scale each literature flow's leading correction by 1.1 or -1
(`_mutant`) and require the kit to fail, while the unperturbed flow passes, on every
hypothesis example. Shapes are fixed per test (a quadratic in 3 dimensions, an MLP
with 3 hidden units, 2 + 2 game players), so JAX compiles once per test and the
examples vary only spectra, seeds and step sizes.
"""

import math
import re
import warnings
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import driftlab as dl
import driftlab.testing as dt


loss_phi, loss_theta = dt.GAME_LOSSES
quadratics = dt.quadratic_problems(dims=3, condition=(1.0, 10.0), negative=True)
mlps = dt.mlp_problems(hidden=3)
games = st.one_of(dt.bilinear_games(dims=2), dt.quadratic_games(dims=2))
# Players' step sizes as multiples of h: equal and unequal.
player_rates = st.tuples(st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([0.5, 1.0, 3.0]))


class _Mutant(dl.AbstractFlow):
    r"""$f_0 + c\,(f_h - f_0)$: `flow` with its leading correction scaled by `factor`."""

    flow: dl.AbstractFlow
    flow_at_zero: dl.AbstractFlow
    factor: jax.Array = eqx.field(converter=jnp.asarray)
    h: jax.Array = eqx.field(converter=jnp.asarray)
    order: ClassVar[int] = 1

    def __call__(self, t, y, args):
        f0, fh = self.flow_at_zero(t, y, args), self.flow(t, y, args)
        return jtu.tree_map(lambda a, b: a + self.factor * (b - a), f0, fh)


def _mutant(make_flow, factor):
    return lambda h: _Mutant(make_flow(h), make_flow(0.0 * h), factor, h)


MUTATIONS = [1.1, -1.0]


def _check_flow_and_mutants(make_flow, step, y, args, order=1):
    """The flow matches `ModifiedFlow(step)`; its mutants fail, naming the constant."""
    dt.assert_coefficients_match(make_flow, step, order, y, args)
    for factor in MUTATIONS:
        with pytest.raises(AssertionError, match=f"f_1 is {factor:g} times the automatic"):
            dt.assert_coefficients_match(_mutant(make_flow, factor), step, order, y, args)


@pytest.mark.parametrize("relative_error", [1e-5, 1e-8])
def test_coefficients_off_by_a_tiny_relative_error_are_caught(relative_error):
    # The automatic coefficients are exact to round-off (measured 1e-16 relative here), so the
    # default rtol (1e-10) must see a 1e-5, even a 1e-8, relative error in f_1: a derivation
    # with a wrong low-order digit is wrong. The unperturbed flow passes at the default.
    problem = dl.problems.quadratic(3, condition=4.0, seed=2)
    gd, make_flow = dl.GradientDescent(problem.loss), lambda h: dl.IGRFlow(problem.loss, h)
    dt.assert_coefficients_match(make_flow, gd, 1, problem.params, problem.data)
    with pytest.raises(AssertionError, match=r"GradientDescent in f_1 \(rtol 1e-10\)") as info:
        dt.assert_coefficients_match(
            _mutant(make_flow, 1 + relative_error), gd, 1, problem.params, problem.data
        )
    # The factor is shown with the digits that tell it from 1.
    (factor,) = re.findall(r"f_1 is ([\d.]+) times the automatic one", str(info.value))
    assert float(factor) == pytest.approx(1 + relative_error, rel=1e-9)


# --- strategies and their guards --------------------------------------------------------


@given(dt.quadratic_problems(dims=(2, 5), condition=(2.0, 50.0), lambda_max=3.0, negative=True))
def test_quadratic_spectrum_is_controlled(problem):
    magnitudes = np.abs(np.linalg.eigvalsh(np.asarray(problem.A)))
    assert np.isclose(magnitudes.max(), 3.0) and 2.0 - 1e-9 <= magnitudes.max() / magnitudes.min()
    assert magnitudes.max() / magnitudes.min() <= 50.0 + 1e-9
    assert np.isclose(dt.curvature(problem), 3.0)


@settings(max_examples=5)
@given(mlps, st.data())
def test_mlp_problems_are_small_and_steps_lie_in_the_region(problem, data):
    size = sum(np.size(leaf) for leaf in jtu.tree_leaves(problem.params))
    assert size == 3 * 3 + 3 + 3 * 2 + 2
    lam = dt.curvature(problem)
    h = data.draw(dt.step_sizes(problem, h_lambda=(0.1, 0.9)))
    assert 0.1 < h * lam < 0.9
    grid = data.draw(dt.step_size_grids(problem, h_lambda=(1e-2, 0.8), num=3))
    assert np.allclose(np.diff(np.log2(grid)), 1.0) and 1e-2 < grid[0] * lam
    assert grid[-1] * lam < 0.8


@given(dt.pytree_states())
def test_pytree_states_are_finite_float64_trees(y):
    leaves = jtu.tree_leaves(y)
    assert leaves and all(leaf.dtype == jnp.float64 for leaf in leaves)
    assert all(np.all(np.abs(np.asarray(leaf)) <= 1.0) for leaf in leaves)


@given(st.data())
def test_pytree_states_like_a_template(data):
    template = {"w": jnp.zeros((2, 3)), "b": (jnp.zeros(3), jnp.zeros(()))}
    y = data.draw(dt.pytree_states(template, scale=5.0))
    assert jtu.tree_structure(y) == jtu.tree_structure(template)
    assert jtu.tree_map(jnp.shape, y) == jtu.tree_map(jnp.shape, template)


@given(mlps, st.data())
def test_batch_partitions_and_orders(problem, data):
    batches = data.draw(dt.batch_partitions(problem, num_batches=(2, 4)))
    m = batches["x"].shape[0]
    assert 2 <= m <= 4 and batches["x"].shape[1] == 12 // m
    reordered = data.draw(dt.batch_orders(batches))
    rows = lambda b: sorted(map(tuple, np.asarray(b["x"]).reshape(m, -1).tolist()))
    assert rows(reordered) == rows(batches)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dt.mlp_problems(activation="relu"), "not smooth"),
        (lambda: dt.mlp_problems(activation="gelu_typo"), "not supported"),
        (lambda: dt.quadratic_problems(condition=0.5), "at least 1"),
        (lambda: dt.quadratic_problems(lambda_max=0.0), "positive"),
        (lambda: dt.step_sizes(2.0, h_lambda=(0.5, 0.5)), "empty"),
        (lambda: dt.step_sizes(2.0, h_lambda=(0.1, 2.5)), "stability edge"),
        (lambda: dt.step_sizes(1.0, h_lambda=(0.0, 0.3), edge=0.1), "stability edge"),
        (lambda: dt.step_sizes(0.0), "no curvature"),
        (lambda: dt.step_size_grids(1.0, h_lambda=(0.2, 0.5), num=4), "does not fit"),
        (lambda: dt.pytree_states(scale=math.inf), "scale"),
    ],
)
def test_meaningless_requests_raise_and_say_why(make, match):
    with pytest.raises(dl.InputError, match=match):
        make()


# --- driftlab's flows, property-tested with the kit -------------------------------------


@pytest.mark.slow
@settings(max_examples=5)
@given(st.one_of(quadratics, mlps))
def test_gradient_flow_and_igr_are_gd_modified_flows(problem):
    gd = dl.GradientDescent(problem.loss)
    flow = lambda h: dl.GradientFlow(problem.loss)
    dt.assert_coefficients_match(flow, gd, 0, problem.params, problem.data)
    _check_flow_and_mutants(lambda h: dl.IGRFlow(problem.loss, h), gd, problem.params, problem.data)


@settings(max_examples=5)
@given(quadratics)
def test_principal_flow_agrees_with_gd_through_order_one(problem):
    make_flow = lambda h: dl.flows.PrincipalFlow(problem.loss, h)
    gd = dl.GradientDescent(problem.loss)
    _check_flow_and_mutants(make_flow, gd, problem.params, problem.data)


@pytest.mark.slow
@settings(max_examples=3)
@given(mlps, st.data())
def test_sgd_flows_match_the_epoch_maps(problem, data):
    batches = data.draw(dt.batch_orders(data.draw(dt.batch_partitions(problem, num_batches=2))))
    exact = lambda h: dl.flows.ExactBatchSGDFlow(problem.loss, h)
    averaged = lambda h: dl.flows.SGDFlow(problem.loss, h)
    _check_flow_and_mutants(exact, dl.SGDEpoch(problem.loss), problem.params, batches)
    _check_flow_and_mutants(
        averaged, dl.OrderAveragedSGDEpoch(problem.loss), problem.params, batches
    )
    # The fixed-order flow is not a gradient (its antisymmetric term); the averaged one has a loss.
    with pytest.raises(AssertionError, match="not a gradient field"):
        dt.assert_gradient_field(exact(0.3), problem.params, batches)
    dt.assert_modified_loss(averaged(0.3), None, problem.params, batches)
    # The order-averaged flow is not the fixed-order epoch's: the antisymmetric term.
    with pytest.raises(AssertionError, match="f_1"):
        dt.assert_coefficients_match(
            averaged, dl.SGDEpoch(problem.loss), 1, problem.params, batches
        )


@pytest.mark.slow
@settings(max_examples=4)
@given(games, player_rates)
def test_game_flows_match_simultaneous_and_alternating_gd(problem, rates):
    alpha, lam = rates
    for flow_cls, map_cls in [
        (dl.flows.SimultaneousGameFlow, dl.SimultaneousGD),
        (dl.flows.AlternatingGameFlow, dl.AlternatingGD),
    ]:
        make_flow = lambda h: flow_cls(loss_phi, loss_theta, h, alpha, lam)
        step = map_cls(loss_phi, loss_theta, alpha, lam)
        _check_flow_and_mutants(make_flow, step, problem.params, problem.data)
    # The natural wrong sign: simultaneous GD's flow claimed for alternating GD.
    with pytest.raises(AssertionError, match="f_1"):
        dt.assert_coefficients_match(
            lambda h: dl.flows.SimultaneousGameFlow(loss_phi, loss_theta, h, alpha, lam),
            dl.AlternatingGD(loss_phi, loss_theta, alpha, lam),
            1,
            problem.params,
            problem.data,
        )


@pytest.mark.slow
@settings(max_examples=3)
@given(st.one_of(quadratics, mlps), st.sampled_from([0.0, 0.5, 0.9]))
def test_heavy_ball_flow_on_the_slow_manifold(problem, beta):
    make_flow = lambda h: dl.flows.HeavyBallFlow(problem.loss, h, beta)
    step = dl.HeavyBall(problem.loss, beta)
    _check_flow_and_mutants(make_flow, step, problem.params, problem.data)


@pytest.mark.slow
@settings(max_examples=3)
@given(mlps, st.sampled_from([1e-8, 1e-2, 1.0]))
def test_adaptive_flows_on_the_slow_manifold(problem, eps):
    # Each map's default eps convention (a static field: one compile per convention).
    args = (problem.params, problem.data)
    _check_flow_and_mutants(
        lambda h: dl.flows.RMSPropFlow(problem.loss, h, 0.9, eps),
        dl.RMSProp(problem.loss, 0.9, eps),
        *args,
    )
    _check_flow_and_mutants(
        lambda h: dl.flows.AdamFlow(problem.loss, h, 0.9, 0.99, eps),
        dl.Adam(problem.loss, 0.9, 0.99, eps, bias_correction=False),
        *args,
    )


@pytest.mark.slow
@settings(max_examples=4)
@given(st.one_of(quadratics, mlps), st.floats(0.01, 0.5))
def test_modified_losses_are_potentials_and_mutants_are_not(problem, h):
    y, data = problem.params, problem.data
    for make_flow in [
        lambda h: dl.IGRFlow(problem.loss, h),
        lambda h: dl.flows.HeavyBallFlow(problem.loss, h, 0.5),
    ]:
        flow = make_flow(h)
        # Being a potential is a property of the truncated field at any h; beyond heavy-ball's
        # slow-manifold region (h lambda >= (1 - sqrt(beta))^2) the flow rightly warns.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.StabilityWarning)
            dt.assert_modified_loss(flow, None, y, data)
            with pytest.raises(AssertionError, match="not minus the gradient"):
                mutant = _mutant(make_flow, 1.1)(h)
                dt.assert_modified_loss(mutant, flow.modified_loss, y, data)
    dt.assert_gradient_field(dl.IGRFlow(problem.loss, h), y, data)
    wrong_sign = lambda p, b: -dl.IGRFlow(problem.loss, h).modified_loss(p, b)
    with pytest.raises(AssertionError, match="-1 times minus the gradient"):
        dt.assert_modified_loss(dl.IGRFlow(problem.loss, h), wrong_sign, y, data)


@settings(max_examples=3)
@given(dt.bilinear_games(dims=2))
def test_bilinear_game_flow_is_not_a_gradient(problem):
    flow = dl.flows.SimultaneousGameFlow(loss_phi, loss_theta, 0.1)
    with pytest.raises(AssertionError, match="relative asymmetry"):
        dt.assert_gradient_field(flow, problem.params, problem.data)


# --- orders: measured slopes, and the mutants' -------------------------------------------


@pytest.mark.slow
@settings(max_examples=2)
@given(mlps, st.data())
def test_igr_local_order_and_its_mutants(problem, data):
    hs = data.draw(dt.step_size_grids(problem, h_lambda=(1e-3, 0.5), num=4))
    gd = dl.GradientDescent(problem.loss)
    make_flow = lambda h: dl.IGRFlow(problem.loss, h)
    dt.assert_order(gd, make_flow, problem.params, 3, args=problem.data, hs=hs)
    for factor in MUTATIONS:
        with pytest.raises(AssertionError, match="expected 3"):
            dt.assert_order(
                gd, _mutant(make_flow, factor), problem.params, 3, "local", problem.data, hs
            )


@pytest.mark.slow
@settings(max_examples=2)
@given(games, player_rates, st.data())
def test_game_flows_global_order_and_their_mutants(problem, rates, data):
    # Small steps: a 10% error in the O(h) correction must dominate the O(h^2) error.
    hs = data.draw(dt.step_size_grids(1.0, h_lambda=(1e-3, 0.04), num=3))
    step = dl.AlternatingGD(loss_phi, loss_theta, *rates)
    make_flow = lambda h: dl.flows.AlternatingGameFlow(loss_phi, loss_theta, h, *rates)
    args = dict(args=problem.data, hs=hs, t_end=1.0)
    dt.assert_order(step, make_flow, problem.params, 2, "global", **args)
    for factor in MUTATIONS:
        with pytest.raises(AssertionError, match="expected 2"):
            dt.assert_order(step, _mutant(make_flow, factor), problem.params, 2, "global", **args)
