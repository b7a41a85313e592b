"""Shared helpers for driftlab's tests."""

import functools as ft

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import driftlab as dl


def tree_allclose(x, y, *, rtol=1e-12, atol=1e-12) -> bool:
    same = jtu.tree_structure(x) == jtu.tree_structure(y)
    return same and all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y))
    )


def relative_error(x, y) -> float:
    """||x - y|| / ||y|| over whole PyTrees."""
    diff = jtu.tree_map(lambda a, b: jnp.asarray(a) - jnp.asarray(b), x, y)
    return float(dl._tree.tree_norm(diff) / dl._tree.tree_norm(y))


@ft.cache
def small_mlp() -> dl.problems.Problem:
    """The test-sized MLP on digits: 64-8-10 (610 parameters), 128 samples."""
    return dl.problems.mlp_digits(hidden=8, num_samples=128, seed=0)


@ft.cache
def small_quadratic(dim: int = 4) -> dl.problems.QuadraticProblem:
    return dl.problems.quadratic(dim, condition=5.0, lambda_max=1.0, seed=0)
