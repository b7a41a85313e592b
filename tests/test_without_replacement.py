"""SGD without replacement at h*lambda = O(1): the expected epoch against its mean over orders.

On quadratic batches L_k = 1/2 y^T A_k y - b_k^T y every epoch is affine, so the mean over all
m! batch orders (`OrderAveragedSGDEpoch`) is exact. At the minimiser of L = mean_k L_k, m GD
steps stay put, and scaling the batch differences A_k - A, b_k - b by eps makes the mean epoch's
displacement D(eps) a polynomial in eps with no linear term; (D(eps) + D(-eps)) / (2 eps^2) is its
second-order coefficient up to O(eps^2): the quantity each form is checked against.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftlab as dl
from driftlab.flows import (
    covariance_weights,
    sgd_without_replacement_correction,
    sgd_without_replacement_loss,
    sgd_without_replacement_regulariser,
)
from driftlab.flows._losses import sgd_variance_regulariser
from driftlab.problems import quadratic_loss

from . import helpers


DIM, NUM_BATCHES = 5, 4
EIGENVALUES = np.array([1.5, 1.0, 0.5, 0.1, -0.2])  # times h: up to 1.5, one negative


def _batches(*, commuting: bool, seed: int = 0):
    """Mean A with EIGENVALUES; batch differences sum to zero (in A's eigenbasis if commuting)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    if commuting:
        diffs = np.stack([basis @ np.diag(rng.standard_normal(DIM)) @ basis.T for _ in range(4)])
    else:
        raw = rng.standard_normal((NUM_BATCHES, DIM, DIM))
        diffs = raw + raw.transpose(0, 2, 1)
    diffs -= diffs.mean(axis=0)
    b_diffs = rng.standard_normal((NUM_BATCHES, DIM))
    b_diffs -= b_diffs.mean(axis=0)
    mean_a = basis @ np.diag(EIGENVALUES) @ basis.T
    mean_b = rng.standard_normal(DIM)
    minimiser = jnp.asarray(np.linalg.solve(mean_a, mean_b))

    def scaled(eps):
        return {"A": jnp.asarray(mean_a + eps * diffs), "b": jnp.asarray(mean_b + eps * b_diffs)}

    return scaled, minimiser


MEAN_EPOCH = eqx.filter_jit(dl.OrderAveragedSGDEpoch(quadratic_loss).__call__)


@jax.jit
def _gd_epoch(y, h, batches):
    mean_batch = jax.tree_util.tree_map(lambda leaf: jnp.mean(leaf, axis=0), batches)
    for _ in range(NUM_BATCHES):
        y = dl.GradientDescent(quadratic_loss)(y, h, mean_batch)
    return y


def _second_order(scaled, y, h, eps):
    """(D(eps) + D(-eps)) / (2 eps^2), D the mean epoch minus m GD steps."""
    displacement = lambda e: MEAN_EPOCH(y, h, scaled(e)) - _gd_epoch(y, h, scaled(e))
    return (displacement(eps) + displacement(-eps)) / (2 * eps**2)


@eqx.filter_jit
def _forms(batches, y, h):
    """Each form's predicted second-order coefficient (eps = 1: the differences themselves)."""
    exact = sgd_without_replacement_correction(quadratic_loss, y, batches, h)
    regulariser = sgd_without_replacement_regulariser(quadratic_loss, h)
    trace = -h * jax.grad(regulariser)(y, batches)
    # The small-h*lambda form: its flow's extra step over one epoch (time m h) beyond IGR.
    small = (
        -NUM_BATCHES
        * h
        * h
        * jax.grad(sgd_variance_regulariser, argnums=1)(quadratic_loss, y, batches)
    )
    return {"exact": exact, "trace": trace, "small": small}


def _relative_errors(scaled, y, h, eps):
    target = _second_order(scaled, y, h, eps)
    return {
        name: helpers.relative_error(value, target)
        for name, value in _forms(scaled(1.0), y, h).items()
    }


@pytest.mark.parametrize("h_lambda", [0.5, 1.5])
def test_second_order_term_matches_the_mean_over_orders(h_lambda):
    scaled, y = _batches(commuting=False)
    h = float(h_lambda / EIGENVALUES.max())
    coarse, fine = (_relative_errors(scaled, y, h, eps) for eps in (1e-2, 2.5e-3))
    # The exact form's residual is the O(eps^2) remainder: 16x smaller at eps / 4
    # (measured 1.1e-5 at eps = 2.5e-3, h*lambda 1.5).
    assert 12 < coarse["exact"] / fine["exact"] < 20, (coarse, fine)
    assert fine["exact"] < 3e-5
    # The weighted trace and the small-h form converge to an O(1) misfit instead
    # (measured: trace 8.0% at h*lambda 0.5, 24.1% at 1.5; small-h 22.9% and 62.1%).
    assert abs(coarse["trace"] / fine["trace"] - 1) < 0.01
    assert 0.05 < fine["trace"] < 0.5 * fine["small"]


@pytest.mark.parametrize("h_lambda", [0.5, 1.5])
def test_weighted_trace_is_exact_when_batch_hessians_commute(h_lambda):
    scaled, y = _batches(commuting=True)
    h = float(h_lambda / EIGENVALUES.max())
    coarse, fine = (_relative_errors(scaled, y, h, eps) for eps in (1e-2, 2.5e-3))
    for name in ("exact", "trace"):
        assert 12 < coarse[name] / fine[name] < 20, (name, coarse, fine)
        assert fine[name] < 3e-5
    # The small-h form is off by O(h*lambda) here too (measured 0.056 and 0.167).
    assert fine["small"] > 0.1 * h_lambda


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_forms_tend_to_the_small_h_form():
    scaled, y = _batches(commuting=False)
    batches = scaled(1.0)
    errors = []
    for h in (1e-2, 1e-3):
        forms = _forms(batches, y, h)
        small = forms["small"]
        errors.append([helpers.relative_error(forms[k], small) for k in ("exact", "trace")])
    # O(h): ten times smaller at h / 10.
    for coarse, fine in zip(*errors):
        assert 8 < coarse / fine < 12
    # And the loss of `sgd_without_replacement_loss` is IGR plus the same regulariser.
    h = 1e-3
    igr = dl.igr_loss(lambda p, b: jnp.mean(jax.vmap(quadratic_loss, (None, 0))(p, b)), h)
    extra = sgd_without_replacement_loss(quadratic_loss, h)(y, batches) - igr(y, batches)
    assert np.isclose(extra, h * sgd_variance_regulariser(quadratic_loss, y, batches), rtol=1e-12)


@pytest.mark.slow
def test_regulariser_against_dense_weights_on_a_network():  # 10-40 s, mostly compilation
    problem = helpers.small_mlp()
    batches = problem.batches(NUM_BATCHES)
    h = 0.7
    flat, unravel = jax.flatten_util.ravel_pytree(problem.params)
    regulariser = sgd_without_replacement_regulariser(problem.loss, h)
    full = lambda x: jnp.mean(jax.vmap(problem.loss, (None, 0))(unravel(x), batches))
    values, vectors = jnp.linalg.eigh(jax.jit(jax.hessian(full))(flat))
    weights = vectors @ jnp.diag(covariance_weights(h * values, NUM_BATCHES)) @ vectors.T
    batch_grads = jax.vmap(jax.grad(lambda x, b: problem.loss(unravel(x), b)), (None, 0))

    def dense(x, fixed):
        noise = batch_grads(x, batches) - jnp.mean(batch_grads(x, batches), axis=0)
        trace = jnp.einsum("ai,ij,aj->", noise, fixed, noise) / NUM_BATCHES
        return h / (2 * (NUM_BATCHES - 1)) * trace

    expected_value = dense(flat, weights)
    value, gradient = eqx.filter_jit(jax.value_and_grad(regulariser))(problem.params, batches)
    assert np.isclose(value, expected_value, rtol=1e-10)
    gradient = jax.flatten_util.ravel_pytree(gradient)[0]
    assert helpers.relative_error(gradient, jax.grad(dense)(flat, weights)) < 1e-9


def test_weights_limits():
    m = 6
    assert np.isclose(covariance_weights(0.0, m), m * (m - 1) / 2)
    x = np.array([0.3, 1.0, 1.7, -0.4])
    closed = (1 - m * (1 - x) ** (m - 1) + (m - 1) * (1 - x) ** m) / x**2
    assert np.allclose(covariance_weights(x, m), closed, rtol=1e-12)


def test_input_errors():
    scaled, y = _batches(commuting=False)
    one = jax.tree_util.tree_map(lambda leaf: leaf[:1], scaled(1.0))
    with pytest.raises(dl.InputError, match="at least 2 batches"):
        sgd_without_replacement_correction(quadratic_loss, y, one, 0.1)
    with pytest.raises(dl.InputError, match="at least 2 batches"):
        sgd_without_replacement_regulariser(quadratic_loss, 0.1)(y, one)
    with pytest.raises(dl.InputError, match="`h`"):
        sgd_without_replacement_regulariser(quadratic_loss, -0.1)
    with pytest.raises(dl.InputError, match="`num_iterations`"):
        sgd_without_replacement_regulariser(quadratic_loss, 0.1, num_iterations=0)
    with pytest.raises(dl.InputError, match="`loss`"):
        sgd_without_replacement_correction(None, y, scaled(1.0), 0.1)


def _quartic_loss(y, batch):
    return quadratic_loss(y, batch) + 0.25 * QUARTIC * jnp.sum(y**4)


QUARTIC = 0.5


@pytest.mark.slow
def test_second_order_term_with_a_third_derivative():  # 10-45 s, mostly compilation
    # L_k = 1/2 y^T A_k y - b_k^T y + (c/4) sum y^4: D^3 L = 6c diag(y) != 0 at the stationary
    # point of L, found by Newton. The term 1/2 D^3L[u, u] of the noise's own displacement u
    # is second order in the batch differences: without it the misfit here is O(1).
    scaled, _ = _batches(commuting=False)
    batches = scaled(1.0)
    mean_batch = jax.tree_util.tree_map(lambda leaf: jnp.mean(leaf, axis=0), batches)
    gradient = jax.grad(_quartic_loss)
    y = jnp.linalg.solve(mean_batch["A"], mean_batch["b"])
    for _ in range(50):
        y = y - jnp.linalg.solve(jax.hessian(_quartic_loss)(y, mean_batch), gradient(y, mean_batch))
    assert float(jnp.linalg.norm(gradient(y, mean_batch))) < 1e-13
    h = float(1.5 / jnp.max(jnp.linalg.eigvalsh(jax.hessian(_quartic_loss)(y, mean_batch))))
    mean_epoch = eqx.filter_jit(dl.OrderAveragedSGDEpoch(_quartic_loss).__call__)
    gd = dl.GradientDescent(_quartic_loss)

    def second_order(eps):
        def displacement(e):
            epoch, stacked = y, scaled(e)
            mean = jax.tree_util.tree_map(lambda leaf: jnp.mean(leaf, axis=0), stacked)
            for _ in range(NUM_BATCHES):
                epoch = gd(epoch, h, mean)
            return mean_epoch(y, h, stacked) - epoch

        return (displacement(eps) + displacement(-eps)) / (2 * eps**2)

    predicted = sgd_without_replacement_correction(_quartic_loss, y, batches, h)
    coarse, fine = (helpers.relative_error(predicted, second_order(e)) for e in (1e-2, 2.5e-3))
    assert 12 < coarse / fine < 20 and fine < 1e-4, (coarse, fine)
