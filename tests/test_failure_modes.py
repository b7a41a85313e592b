"""Fuzzing the public API with malformed input: a correct finite answer or a documented error.

Every case must either return finite numbers or raise one of driftlab's documented
exceptions (`InputError`, `MeasurementError`, both `DriftlabError`s); never a NaN, a
hang, or a raw JAX trace error.
"""

import functools as ft
import warnings

import hypothesis.strategies as st
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given

import driftlab as dl

from .helpers import small_quadratic


DTYPES = [jnp.float64, jnp.float32, jnp.int32, jnp.float16, jnp.complex64, jnp.bool_]
STEP_SIZES = st.one_of(
    st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-300, 1e300, 1e3]),
    st.floats(min_value=1e-6, max_value=3.0),
)


@st.composite
def states(draw):
    """A state for the 4-dimensional quadratic: right or wrong dtype, shape, structure, values."""
    quad = small_quadratic()
    kind = draw(st.sampled_from(["ok", "dtype", "shape", "structure", "nonfinite", "empty"]))
    y = np.asarray(quad.params)
    if kind == "dtype":
        return jnp.asarray(y, draw(st.sampled_from(DTYPES[1:])))
    if kind == "shape":
        return jnp.ones(draw(st.sampled_from([(3,), (5,), (4, 1), (2, 2), ()])))
    if kind == "structure":
        return draw(
            st.sampled_from([(jnp.asarray(y),), {"y": jnp.asarray(y)}, [jnp.asarray(y)] * 2])
        )
    if kind == "nonfinite":
        return (
            jnp.asarray(y).at[draw(st.integers(0, 3))].set(draw(st.sampled_from([np.nan, np.inf])))
        )
    if kind == "empty":
        return draw(st.sampled_from([None, (), {}]))
    return jnp.asarray(y)


def _assert_finite(result):
    for leaf in jtu.tree_leaves(result):
        if isinstance(leaf, float | np.ndarray | jnp.ndarray | np.floating):
            assert np.all(np.isfinite(np.asarray(leaf))), result


def _gd_flow():
    quad = small_quadratic()
    return quad, dl.GradientDescent(quad.loss), dl.GradientFlow(quad.loss)


def _documented(call):
    try:
        result = call()
    except dl.DriftlabError as error:
        assert str(error), "a documented error must explain itself"
        return None
    _assert_finite(result)
    return result


@given(y0=states(), h=STEP_SIZES)
def test_iterate_fuzz(y0, h):
    quad, step, _ = _gd_flow()
    _documented(lambda: dl.iterate(step, y0, h, 3, quad.data))


@given(y0=states(), h=STEP_SIZES)
def test_local_error_fuzz(y0, h):
    quad, step, flow = _gd_flow()
    result = _documented(lambda: dl.local_error(step, flow, y0, h, quad.data))
    if result is not None:
        _assert_finite([result.error, result.floor])


@given(y0=states(), t1=st.sampled_from([1.0, 0.0, -1.0, float("nan"), 1e-300]))
def test_solve_fuzz(y0, t1):
    quad, _, flow = _gd_flow()
    _documented(lambda: dl.solve(flow, y0, t1, args=quad.data))


@given(
    hs=st.lists(STEP_SIZES, min_size=0, max_size=6),
    kind=st.sampled_from(["local", "global", "bogus"]),
)
def test_order_of_accuracy_fuzz(hs, kind):
    quad, step, flow = _gd_flow()
    call = ft.partial(
        dl.order_of_accuracy, step, lambda h: flow, quad.params, hs, kind, quad.data, t_end=1.0
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            result = call()
        except dl.DriftlabError:
            return
    assert all(issubclass(w.category, dl.StabilityWarning | dl.RoundoffWarning) for w in record)
    assert np.isfinite(result.slope) and result.used.sum() >= 3


@given(args=st.sampled_from([None, {"A": jnp.eye(3), "b": jnp.zeros(3)}, {"A": jnp.eye(4)}]))
def test_mismatched_data_is_a_documented_error(args):
    quad, step, flow = _gd_flow()
    with pytest.raises(dl.InputError):
        dl.local_error(step, flow, quad.params, 0.1, args)


class _Float32Step(dl.AbstractStepMap):
    def __call__(self, y, h, args):
        return (y - h * y).astype(jnp.float32)


def test_a_map_that_leaves_float64_is_refused():
    quad = small_quadratic()
    with pytest.raises(dl.InputError, match="float64"):
        dl.iterate(_Float32Step(), quad.params, 0.1, 2, quad.data)


def test_divergence_is_a_measurement_error_not_a_nan():
    quad, step, _ = _gd_flow()
    with pytest.raises(dl.MeasurementError, match="non-finite"):
        dl.iterate(step, quad.params, 1e3, 200, quad.data)


@pytest.mark.slow
def test_same_seed_gives_bit_identical_results():
    def run():
        problem = dl.problems.mlp_digits(hidden=4, num_samples=64, seed=3)
        estimate = dl.order_of_accuracy(
            dl.GradientDescent(problem.loss),
            lambda h: dl.IGRFlow(problem.loss, h),
            problem.params,
            [0.05, 0.1, 0.2],
            "local",
            problem.data,
        )
        return estimate.errors, estimate.slope

    (errors1, slope1), (errors2, slope2) = run(), run()
    assert np.array_equal(errors1, errors2) and slope1 == slope2
