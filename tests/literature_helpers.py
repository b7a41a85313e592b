"""Shared pieces of the literature-flow tests: coefficient extraction, slopes, small problems."""

import functools as ft
import warnings

import jax
import jax.tree_util as jtu

import driftlab as dl


def linear_coefficients(make_flow, y, args):
    """`[f_0, f_1]` of a flow that is affine in `h`: `f(h=0)` and `f(h=1) - f(h=0)`.

    The coefficients are formal: a momentum or adaptive flow evaluated at `h = 1`
    is usually outside its slow-manifold region, and its `StabilityWarning` is
    expected there.
    """
    f0 = make_flow(0.0)(0.0, y, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.StabilityWarning)
        f1 = jtu.tree_map(lambda a, b: a - b, make_flow(1.0)(0.0, y, args), f0)
    return [f0, f1]


def error_ratio(error_fn, h):
    """`error(h) / error(h / 2)`: about `2**q` for an `O(h**q)` error."""
    return error_fn(h) / error_fn(h / 2)


@ft.cache
def tiny_mlp():
    """A 64-2-10 MLP on 32 digits (160 parameters): for automatic-BEA comparisons."""
    return dl.problems.mlp_digits(hidden=2, num_samples=32, seed=1)


def hvp(loss, y, args, v):
    return jax.jvp(lambda p: jax.grad(loss)(p, args), (y,), (v,))[1]
