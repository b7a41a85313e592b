"""Device Lanczos / Arnoldi (driftlab._lanczos) against dense eigensolvers and ARPACK."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab import _lanczos


def _dense_hessian(problem):
    flat, unravel = ravel_pytree(problem.params)
    grad = lambda x: ravel_pytree(jax.grad(problem.loss)(unravel(x), problem.data))[0]
    hessian = np.asarray(jax.jacfwd(grad)(flat))
    return 0.5 * (hessian + hessian.T)


@pytest.mark.slow
def test_eigenpairs_match_dense_eigh_at_1e3_parameters():
    problem = dl.problems.mlp_digits(hidden=12, num_samples=128, seed=1)  # 910 parameters
    hessian = _dense_hessian(problem)
    values, vectors = np.linalg.eigh(hessian)
    k = 4
    spectrum = dl.hessian_eigenpairs(
        problem.loss, problem.params, problem.data, k=k, method="lanczos"
    )
    scale = np.abs(values).max()
    np.testing.assert_allclose(spectrum.eigenvalues, values[-k:], rtol=0, atol=1e-10 * scale)
    # Eigenvectors up to sign (the top eigenvalues are simple here).
    overlaps = np.abs(np.sum(spectrum.eigenvectors * vectors[:, -k:], axis=0))
    np.testing.assert_allclose(overlaps, 1.0, atol=1e-8)
    assert np.all(spectrum.residuals <= 1e-10 * scale)
    lam = dl.lambda_max(problem.loss, problem.params, problem.data)
    assert lam == pytest.approx(values[-1], rel=1e-10)


def _random_symmetric(n, top, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = np.concatenate([top, rng.uniform(-1, 1, n - len(top))])
    return jnp.asarray((q * eigenvalues) @ q.T), eigenvalues


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_which_selects_the_right_end(which):
    matrix, eigenvalues = _random_symmetric(200, [6.0, 5.0, 4.0, -7.0, -5.5, -4.5])
    expected = np.sort(
        {
            "LA": np.sort(eigenvalues)[-3:],
            "SA": np.sort(eigenvalues)[:3],
            "LM": eigenvalues[np.argsort(np.abs(eigenvalues))[-3:]],
        }[which]
    )
    values = _lanczos.eigsh(lambda v: matrix @ v, jr.normal(jr.key(0), (200,)), 3, which=which)[0]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_lanczos_is_jittable_and_reports_residuals():
    matrix, _ = _random_symmetric(300, [10.0, 9.0, 8.5])
    run = jax.jit(lambda s: _lanczos.eigsh(lambda v: matrix @ v, s, 3, tol=1e-12))
    values, vectors, residuals, products = run(jr.normal(jr.key(0), (300,)))
    np.testing.assert_allclose(values, [8.5, 9.0, 10.0], rtol=1e-12)
    true_residuals = np.linalg.norm(matrix @ vectors - vectors * values, axis=0)
    np.testing.assert_allclose(residuals, true_residuals, rtol=1e-3, atol=1e-13)
    assert int(products) < 300


def test_krylov_exhaustion_stops_early():
    matrix = jnp.diag(jnp.array([3.0, 1.0, 0.0, 0.0, 0.0]))
    start = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0])
    values, _, _, products = _lanczos.eigsh(lambda v: matrix @ v, start, 1)
    assert float(values[-1]) == pytest.approx(3.0, rel=1e-14) and int(products) == 2


# 150: the Krylov space is capped at 80 products; 13: exhausted after 13, which is not a
# whole number of the reorthogonalisation's blocks.
@pytest.mark.parametrize("n", [150, 13])
def test_spectral_radius_of_a_nonsymmetric_matrix(n):
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((n, n)) / np.sqrt(n)
    matrix[:3, :3] += np.array([[0.0, 2.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 1.5]])
    expected = np.max(np.abs(np.linalg.eigvals(matrix)))
    radius, _ = _lanczos.spectral_radius(
        lambda v: jnp.asarray(matrix) @ v, jr.normal(jr.key(0), (n,))
    )
    assert float(radius) == pytest.approx(expected, rel=1e-10)


@pytest.mark.slow
def test_stability_index_of_heavy_ball_above_the_dense_limit():
    problem = dl.problems.mlp_digits(hidden=4, num_samples=64, seed=0)
    step = dl.HeavyBall(problem.loss, 0.6)
    state = step(step.init(problem.params), 0.5, problem.data)  # a non-zero momentum buffer
    flat, unravel = ravel_pytree(state)
    assert flat.size > dl.analysis._spectra.DENSE_LIMIT  # the Arnoldi branch
    displacement = lambda x: ravel_pytree(step(unravel(x), 0.5, problem.data))[0] - x
    jacobian = np.asarray(jax.jacfwd(displacement)(flat))
    expected = np.max(np.abs(np.linalg.eigvals(jacobian)))
    index = dl.stability_index(step, state, 0.5, problem.data)
    assert index == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_eigenpairs_match_arpack_at_1e5_parameters():
    key1, key2 = jr.split(jr.key(3))
    inputs = jr.normal(key1, (256, 200))
    params = {
        "W1": jr.normal(key2, (200, 480)) / jnp.sqrt(200.0),
        "W2": jr.normal(jr.key(4), (480, 10)) / jnp.sqrt(480.0),
    }
    data = (inputs, jnp.sin(inputs[:, :10]))
    loss = lambda p, d: (
        0.5 * jnp.mean(jnp.sum((jnp.tanh(d[0] @ p["W1"]) @ p["W2"] - d[1]) ** 2, axis=-1))
    )
    flat, unravel = ravel_pytree(params)
    assert flat.size >= 1e5
    spectrum = dl.hessian_eigenpairs(loss, params, data, k=3, method="lanczos", max_iterations=300)
    grad = lambda x, d: ravel_pytree(jax.grad(loss)(unravel(x), d))[0]
    hvp = jax.jit(lambda x, v, d: jax.jvp(lambda z: grad(z, d), (x,), (v,))[1])
    operator = scipy.sparse.linalg.LinearOperator(
        (flat.size,) * 2,
        matvec=lambda v: np.asarray(hvp(flat, jnp.asarray(v), data)),
        dtype=np.float64,
    )
    reference = scipy.sparse.linalg.eigsh(operator, k=3, which="LA", tol=1e-12)[0]
    np.testing.assert_allclose(spectrum.eigenvalues, np.sort(reference), rtol=1e-8)


@pytest.mark.parametrize("num_iterations", [37, 40])
def test_basis_stays_orthonormal_past_convergence(num_iterations):
    # Plain Lanczos loses orthogonality once a Ritz pair converges (Paige): on a spectrum
    # with well-separated extremes its basis drifts far from orthonormal within 40 steps.
    # Every new vector must be orthogonalised against every earlier one, including those
    # of the block being filled (37 steps: a partial last block; 40: whole blocks).
    spectrum = jnp.concatenate([jnp.array([1e3, 5e2]), jnp.linspace(0.0, 1.0, 298)])
    start = jr.normal(jr.key(3), (spectrum.size,), jnp.float64)
    _, _, basis, _, size = _lanczos._lanczos_run(
        lambda v: spectrum * v, start, num_iterations, None, 0, "LA"
    )
    assert int(size) == num_iterations
    gram = np.asarray(basis @ basis.T)
    assert np.max(np.abs(gram - np.eye(num_iterations))) < 1e-12


@pytest.mark.parametrize("size", [5, 37])
def test_orthogonalise_twice_is_enough_for_a_nearly_dependent_vector(size):
    # w = Q c + 1e-10 u with u exactly orthogonal to the orthonormal Q: one classical
    # Gram-Schmidt pass leaves components of about eps ||w|| along Q, i.e. 1e-6 relative
    # to what remains (1e-10 ||w||); the second pass (Kahan's "twice is enough") removes
    # them. Arnoldi meets this whenever its Krylov space is nearly invariant.
    rng = np.random.default_rng(size)
    n = 300
    q, _ = np.linalg.qr(rng.standard_normal((n, size + 1)))
    basis, u = q[:, :size].T, q[:, size]
    coefficients = rng.standard_normal(size) * 10.0 ** rng.uniform(-2, 2, size)
    w = basis.T @ coefficients + 1e-10 * u
    padded = np.asarray(_lanczos._empty_basis(size, n, jnp.float64)).copy()
    padded[:size] = basis
    out, along = _lanczos._orthogonalise(jnp.asarray(padded), jnp.asarray(w), jnp.asarray(size))
    out = np.asarray(out)
    assert np.max(np.abs(basis @ out)) < 1e-12 * np.linalg.norm(out)
    np.testing.assert_allclose(out, 1e-10 * u, rtol=0, atol=1e-14 * np.linalg.norm(w))
    np.testing.assert_allclose(np.asarray(along)[:size], coefficients, rtol=1e-12)
