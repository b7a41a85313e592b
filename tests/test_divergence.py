"""Divergent points are failures, listed with their reason: never an error to fit."""

import warnings

import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest

import driftlab as dl

from . import helpers


def _gd_on_quadratic():
    quad = helpers.small_quadratic(4)  # eigenvalues 0.2 .. 1: GD is stable for h < 2
    return quad, dl.GradientDescent(quad.loss), dl.GradientFlow(quad.loss)


def _exact_error(quad, h, num_steps):
    """GD on L = y.A y / 2 is y -> (I - h A) y; the flow is exp(-t A) y."""
    a = jnp.asarray(quad.A)
    iterate = jnp.linalg.matrix_power(jnp.eye(4) - h * a, num_steps) @ quad.params
    flow = jsl.expm(-num_steps * h * a) @ quad.params
    return float(jnp.linalg.norm(iterate - flow)), float(jnp.linalg.norm(flow))


def test_a_single_divergent_measurement_raises():
    quad, step, flow = _gd_on_quadratic()
    # h = 3: the stiffest direction grows like |1 - 3|^n; after 4 steps the error is the
    # size of the state (the MLP at h = 5 returned 3.7e73 without a flag).
    error, _ = _exact_error(quad, 3.0, 4)
    assert error > float(jnp.linalg.norm(quad.params))
    with pytest.raises(dl.DivergenceError, match="h=3 diverged: after 4 step"):
        dl.global_error(step, flow, quad.params, 3.0, 12.0, quad.data)
    # h = 1.9 oscillates but contracts (|1 - 1.9| < 1): measured, not flagged.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = dl.global_error(step, flow, quad.params, 1.9, 7.6, quad.data)
    assert np.isclose(measured.error, _exact_error(quad, 1.9, 4)[0], rtol=1e-8)
    # Non-finite iterates are the same failure (and still a MeasurementError).
    with pytest.raises(dl.DivergenceError, match="non-finite"):
        dl.iterate(step, quad.params, 1e3, 200, quad.data)


def test_divergent_points_are_left_out_of_the_fit_and_listed():
    quad, step, flow = _gd_on_quadratic()
    hs = [0.05, 0.1, 0.2, 3.0, 4.0]
    with pytest.warns(dl.StabilityWarning) as record:
        estimate = dl.order_of_accuracy(
            step, lambda h: flow, quad.params, hs, "global", quad.data, t_end=12.0
        )
    messages = [str(w.message) for w in record]
    assert any(m.startswith("2 of 5 points diverged") for m in messages), messages
    assert list(estimate.used) == [True, True, True, False, False]
    assert list(estimate.causes) == ["", "", "", "diverged", "diverged"]
    assert np.all(np.isnan(estimate.errors[3:]))
    assert all("diverged" in line for line in estimate.excluded)
    assert "no (diverged)" in str(estimate)
    assert estimate.to_dict()["causes"][3:] == ["diverged", "diverged"]
    assert estimate.agrees(0.1)  # global error of the order-0 flow: slope 1
    # Only divergent points beyond the stability edge: nothing to fit, and it says why.
    with pytest.raises(dl.MeasurementError, match="3 of 3 points diverged"):
        dl.order_of_accuracy(
            step,
            lambda h: flow,
            quad.params,
            [2.5, 5.0, 10.0],
            "global",
            quad.data,
            t_end=40.0,
            check_stability=False,
        )


def test_a_non_finite_gradient_is_named_not_blamed_on_the_step_size():
    quad, _, _ = _gd_on_quadratic()
    step = dl.GradientDescent(lambda y, data: jnp.sqrt(quad.loss(y, data) - 1e3))
    with pytest.raises(dl.MeasurementError, match="non-finite at the start state") as info:
        dl.iterate(step, quad.params, 1e-3, 2, quad.data)
    assert not isinstance(info.value, dl.DivergenceError)
    assert "stability edge" not in str(info.value)


def test_estimates_built_without_causes_still_print_and_serialise():
    # Benchmarks build `OrderEstimate`s from stored fits, with neither notes nor causes.
    estimate = dl.OrderEstimate(
        kind="local",
        map_name="GD",
        flow_name="IGR",
        hs=np.array([0.1, 0.2, 0.4, 0.8]),
        errors=np.array([1e-14, 1e-5, 8e-5, 6.4e-4]),
        floors=np.array([1e-14, 1e-14, 1e-14, 1e-14]),
        used=np.array([False, True, True, True]),
        slope=3.0,
        slope_stderr=0.0,
        intercept=0.0,
        expected=3.0,
        stability_index=float("nan"),
    )
    assert "no (floor)" in str(estimate)
    assert estimate.to_dict()["causes"] == ["floor", "", "", ""]
    assert estimate.excluded == ["h=0.1: error 1e-14 within 10x of the floor 1e-14"]
