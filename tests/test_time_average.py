"""distance_to_time_average against closed forms: GD on a 1-D quadratic at 1 < h lambda < 2."""

import jax.numpy as jnp
import numpy as np
import pytest

import driftlab as dl


def test_window_average_of_oscillating_gd_on_a_quadratic():
    # L = lam/2 x^2, x_n = r^n x0 with r = 1 - h lam = -0.5: the iterates oscillate.
    lam, h, x0, radius, n = 3.0, 0.5, 2.0, 3, 20
    loss = lambda x, args: 0.5 * lam * jnp.sum(x**2)
    result = dl.analysis.distance_to_time_average(
        dl.GradientDescent(loss),
        dl.GradientFlow(loss),
        jnp.array([x0]),
        h,
        n,
        width=radius,
        kernel="window",
    )
    r = 1 - h * lam
    steps = np.arange(radius, n + 1 - radius)
    # Sum_{j=-R}^{R} r^(n+j) / (2R+1) = r^(n-R) (1 - r^(2R+1)) / ((1 - r)(2R+1)).
    geometric = lambda q: q ** (steps - radius) * (1 - q ** (2 * radius + 1)) / (1 - q)
    averaged = x0 * geometric(r) / (2 * radius + 1)
    flow = x0 * np.exp(-lam * h * steps)  # gradient flow at t = n h
    np.testing.assert_array_equal(result.steps, steps)
    np.testing.assert_allclose(result.distance, np.abs(averaged - flow), rtol=1e-9, atol=1e-15)
    averaged_loss = 0.5 * lam * x0**2 * geometric(r**2) / (2 * radius + 1)
    np.testing.assert_allclose(result.averaged_loss, averaged_loss, rtol=1e-12)
    np.testing.assert_allclose(
        result.loss_error, np.abs(averaged_loss - 0.5 * lam * flow**2), rtol=1e-8, atol=1e-15
    )
    np.testing.assert_allclose(
        result.relative_distance, np.abs(averaged - flow) / np.abs(averaged - x0), rtol=1e-9
    )


def test_gaussian_weights_and_a_constant_sequence():
    weights = dl.analysis.averaging_weights(2.0)
    assert weights.size == 13 and weights.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(weights, weights[::-1])
    averaged = dl.analysis.time_average(jnp.full((20, 2), 3.0), weights)
    assert averaged.shape == (8, 2)
    np.testing.assert_allclose(averaged, 3.0, rtol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0.0}, "width"),
        ({"width": 1.5, "kernel": "window"}, "whole"),
        ({"kernel": "box"}, "kernel"),
    ],
)
def test_bad_averaging(kwargs, match):
    with pytest.raises(dl.InputError, match=match):
        dl.analysis.averaging_weights(**{"width": 2.0, **kwargs})


def test_too_few_steps_for_the_window():
    with pytest.raises(dl.InputError, match="more steps"):
        dl.analysis.time_average(jnp.zeros(5), dl.analysis.averaging_weights(3, "window"))
