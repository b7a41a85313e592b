"""Batch sharpness E_B[g_B^T H_B g_B / |g_B|^2] (Andreyev & Beneventano) against dense Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.problems import quadratic_loss

from . import helpers


def test_batch_sharpness_matches_dense_hessians_on_a_network():
    problem = helpers.small_mlp()
    batches = problem.batches(4)
    flat, unravel = ravel_pytree(problem.params)
    batch_loss = lambda x, batch: problem.loss(unravel(x), batch)
    gradient_and_hessian = jax.jit(
        lambda b: (jax.grad(batch_loss)(flat, b), jax.hessian(batch_loss)(flat, b))
    )
    quotients = []
    for k in range(4):
        gradient, hessian = gradient_and_hessian(
            jax.tree_util.tree_map(lambda leaf: leaf[k], batches)
        )
        quotients.append(gradient @ hessian @ gradient / (gradient @ gradient))
    expected = np.mean(quotients)
    # The batches differ: a plant that used the mean gradient or Hessian would not match.
    assert np.ptp(quotients) > 1e-3 * abs(expected)
    assert np.isclose(
        dl.batch_sharpness(problem.loss, problem.params, batches), expected, rtol=1e-12
    )


def test_full_batch_is_a_rayleigh_quotient_of_the_hessian():
    eigenvalues = np.array([3.0, 1.0, 0.5])
    matrix = dl.problems.random_spectrum_matrix(eigenvalues, seed=1)
    vectors = np.linalg.eigh(matrix)[1]
    one = {"A": jnp.asarray(matrix)[None], "b": jnp.zeros((1, 3))}
    # Along an eigenvector the gradient A y is that eigenvector: the quotient is its eigenvalue.
    for value, vector in zip(np.sort(eigenvalues), vectors.T):
        sharpness = dl.batch_sharpness(quadratic_loss, jnp.asarray(vector), one)
        assert np.isclose(sharpness, value, rtol=1e-13)
    y = jnp.asarray(np.random.default_rng(0).standard_normal(3))
    assert 0.5 < dl.batch_sharpness(quadratic_loss, y, one) < 3.0


def test_bad_input():
    one = {"A": jnp.eye(2)[None], "b": jnp.zeros((1, 2))}
    with pytest.raises(dl.InputError, match="zero gradient"):
        dl.batch_sharpness(quadratic_loss, jnp.zeros(2), one)
    with pytest.raises(dl.InputError, match="stack of batches"):
        dl.batch_sharpness(quadratic_loss, jnp.ones(2), {"A": jnp.eye(2), "b": 0.0})
    with pytest.raises(dl.InputError, match="float64"):
        dl.batch_sharpness(quadratic_loss, jnp.ones(2, jnp.float32), one)
