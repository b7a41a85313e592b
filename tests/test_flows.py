"""Gradient flow and IGR against closed forms on a quadratic, and as diffrax vector fields."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl

from .helpers import relative_error, small_mlp, small_quadratic


def test_igr_field_equals_its_closed_form_on_a_quadratic():
    quad, h = small_quadratic(), 0.3
    a, y = np.asarray(quad.A), np.asarray(quad.params)
    expected = -(a + 0.5 * h * a @ a) @ y
    field = dl.IGRFlow(quad.loss, h)(0.0, quad.params, quad.data)
    assert relative_error(field, expected) < 1e-12


@pytest.mark.slow
def test_igr_modified_loss_is_the_potential_of_its_field():
    problem, h = small_mlp(), 0.1
    flow = dl.IGRFlow(problem.loss, h)
    minus_grad = jax.tree_util.tree_map(
        jnp.negative, jax.grad(flow.modified_loss)(problem.params, problem.data)
    )
    assert relative_error(flow(0.0, problem.params, problem.data), minus_grad) < 1e-12


def test_gradient_flow_solution_matches_expm():
    quad = small_quadratic()
    solution = dl.solve(dl.GradientFlow(quad.loss), quad.params, 2.0, args=quad.data)
    assert relative_error(solution, quad.gradient_flow_solution(quad.params, 2.0)) < 1e-10


def test_igr_solution_at_several_times_matches_expm():
    quad, h = small_quadratic(), 0.2
    ts = jnp.array([0.5, 1.0, 1.5])
    ys = dl.solve(dl.IGRFlow(quad.loss, h), quad.params, 1.5, ts=ts, args=quad.data)
    for k, t in enumerate(ts):
        assert relative_error(ys[k], quad.igr_flow_solution(quad.params, float(t), h)) < 1e-10


@pytest.mark.slow
def test_flows_are_diffrax_vector_fields_on_pytrees():
    problem, h = small_mlp(), 0.1
    term = diffrax.ODETerm(dl.IGRFlow(problem.loss, h))
    field = term.vf(0.0, problem.params, problem.data)
    assert jax.tree_util.tree_structure(field) == jax.tree_util.tree_structure(problem.params)
    # Its value, independently: -(g + h/2 H g) with H the dense Hessian of the ravelled loss.
    flat, unravel = ravel_pytree(problem.params)
    loss = lambda p: problem.loss(unravel(p), problem.data)
    g, hessian = jax.grad(loss)(flat), jax.hessian(loss)(flat)
    assert relative_error(ravel_pytree(field)[0], -(g + 0.5 * h * hessian @ g)) < 1e-12


def test_gradient_flow_has_no_h_dependence_and_order_zero():
    quad = small_quadratic()
    flow = dl.GradientFlow(quad.loss)
    assert flow.order == 0 and dl.IGRFlow(flow.loss, 0.1).order == 1
    # -A y exactly, at any t and whatever h it carries; IGR at h = 0 is gradient flow.
    minus_ay = -np.asarray(quad.A) @ np.asarray(quad.params)
    for field in [
        flow(0.0, quad.params, quad.data),
        dl.GradientFlow(quad.loss, 0.7)(3.0, quad.params, quad.data),
        dl.IGRFlow(quad.loss, 0.0)(0.0, quad.params, quad.data),
    ]:
        assert relative_error(field, minus_ay) < 1e-14


def test_non_gradient_flows_refuse_a_modified_loss():
    class Rotation(dl.AbstractFlow):
        h: float = 0.0
        order: int = 0

        def __call__(self, t, y, args):
            return jnp.array([-y[1], y[0]])

    with pytest.raises(dl.InputError, match="not a gradient flow"):
        Rotation().modified_loss(jnp.zeros(2), None)


def test_solver_failure_is_a_clear_error():
    blow_up = lambda t, y, args: y**2
    with pytest.raises(dl.MeasurementError, match="failed"):
        dl.solve(blow_up, jnp.array([1.0]), 2.0)
