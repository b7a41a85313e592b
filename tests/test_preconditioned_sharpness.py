"""Preconditioned sharpness lambda_1(P^-1 H) of adaptive methods, and its stability threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import driftlab as dl


def _mlp(seed=0, n=24, d=3, m=6):
    """A 3-6-1 tanh MLP on random regression data (31 parameters, in a dict PyTree)."""
    keys = jax.random.split(jax.random.key(seed), 6)
    data = (jax.random.normal(keys[0], (n, d)), jax.random.normal(keys[1], (n,)))
    params = {
        "W1": jax.random.normal(keys[2], (d, m)) / jnp.sqrt(d),
        "b1": 0.1 * jax.random.normal(keys[3], (m,)),
        "W2": jax.random.normal(keys[4], (m,)) / jnp.sqrt(m),
    }

    def loss(p, batch):
        return jnp.mean((jnp.tanh(batch[0] @ p["W1"] + p["b1"]) @ p["W2"] - batch[1]) ** 2)

    # A preconditioner spread over two orders of magnitude, as sqrt(nu) is in practice.
    scale = jax.tree.map(
        lambda x, key: jnp.exp(2.0 * jax.random.uniform(key, x.shape)) * 1e-2,
        params,
        dict(zip(params, jax.random.split(keys[5], 3))),
    )
    return loss, params, data, scale


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_preconditioned_eigenpairs_match_the_dense_generalised_problem(method):
    loss, params, data, preconditioner = _mlp()
    flat, unravel = ravel_pytree(params)
    hessian = np.asarray(jax.hessian(lambda z: loss(unravel(z), data))(flat))
    p = np.asarray(ravel_pytree(preconditioner)[0])
    # Independent of the symmetric form: the generalised problem H u = lambda P u.
    expected = scipy.linalg.eigh(hessian, np.diag(p), eigvals_only=True)[-3:]
    spectrum = dl.analysis.preconditioned_eigenpairs(
        loss, params, preconditioner, data, k=3, method=method
    )
    np.testing.assert_allclose(spectrum.eigenvalues, expected, rtol=1e-10)
    # The unit vectors are the symmetric form's; u = P^-1/2 v solves H u = lambda P u.
    u = spectrum.eigenvectors / np.sqrt(p)[:, None]
    np.testing.assert_allclose(
        hessian @ u, p[:, None] * u * spectrum.eigenvalues, atol=1e-9 * expected[-1] * p.max()
    )
    gram = spectrum.eigenvectors.T @ spectrum.eigenvectors
    np.testing.assert_allclose(gram, np.eye(3), atol=1e-9)
    # The preconditioner matters: the plain sharpness is a different number.
    assert abs(expected[-1] - dl.lambda_max(loss, params, data) / p.min()) > 1e-3 * expected[-1]


@pytest.mark.parametrize("b1", [0.0, 0.5, 0.9])
def test_threshold_is_where_the_frozen_preconditioner_update_turns_unstable(b1):
    # One eigendirection of P^-1 H with eigenvalue lam: m' = b1 m + (1 - b1) lam x,
    # x' = x - h m'. Its spectral radius crosses 1 exactly at the threshold.
    h = 0.05
    threshold = dl.analysis.preconditioned_stability_threshold(h, b1)

    def radius(lam):
        update = np.array([[1 - h * (1 - b1) * lam, -h * b1], [(1 - b1) * lam, b1]])
        return np.max(np.abs(np.linalg.eigvals(update)))

    assert radius(threshold * (1 - 1e-6)) < 1 < radius(threshold * (1 + 1e-6))
    assert radius(threshold) == pytest.approx(1.0, abs=1e-12)


def test_threshold_closed_forms():
    assert dl.analysis.preconditioned_stability_threshold(0.1, 0.9) == pytest.approx(380.0)
    assert dl.analysis.preconditioned_stability_threshold(0.1) == pytest.approx(20.0)


def test_bad_input():
    loss, params, data, preconditioner = _mlp()
    with pytest.raises(dl.InputError, match="`preconditioner` must be a PyTree"):
        dl.analysis.preconditioned_eigenpairs(loss, params, {"W1": params["W1"]}, data)
    negative = jax.tree.map(lambda x: -x, preconditioner)
    with pytest.raises(dl.InputError, match="`preconditioner` must be positive"):
        dl.analysis.preconditioned_eigenpairs(loss, params, negative, data)
    with pytest.raises(dl.InputError, match="`h` must be positive"):
        dl.analysis.preconditioned_stability_threshold(0.0)
    with pytest.raises(dl.InputError, match="`b1` must lie in"):
        dl.analysis.preconditioned_stability_threshold(0.1, 1.0)
