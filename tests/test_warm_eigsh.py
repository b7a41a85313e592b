"""The warm-started top-k eigensolver along a drifting sequence of symmetric matrices."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

from driftlab import _lanczos
from driftlab.flows._central import _push, _warm_start


K, GUARDS, N = 4, 1, 60


def _drifting_matrices(num=16):
    """H(t) = Q(t) diag(lam(t)) Q(t)^T with rotating eigenvectors, t in [0, 1].

    In the top K: lam_2 and lam_3 cross inside it (at t = 0.5); lam_4 falls and
    lam_5 rises, so that they swap places at t = 0.4: one eigenvalue leaves the top K
    and another enters it. The rest is a bulk in [0, 1].
    """
    generator = np.asarray(jr.normal(jr.key(0), (N, N)))
    skew = 0.15 * (generator - generator.T) / np.sqrt(N)
    basis = np.linalg.qr(np.asarray(jr.normal(jr.key(1), (N, N))))[0]
    bulk = np.linspace(0.0, 1.0, N - 5)
    times = (np.arange(num) + 0.5) / num  # never exactly at a crossing
    matrices, spectra = [], []
    for t in times:
        top = np.array([10.0, 6.0 + 2.0 * t, 7.0 - 2.0 * t, 4.0 - 2.0 * t, 3.0 + 0.5 * t])
        values = np.concatenate([top, bulk])
        rotation = scipy.linalg.expm(t * skew) @ basis
        matrices.append((rotation * values) @ rotation.T)
        spectra.append(np.sort(values))
    return matrices, spectra


def test_the_drifting_sequence_crosses_inside_and_out_of_the_top_k():
    _, spectra = _drifting_matrices()
    first, last = spectra[0][-K:], spectra[-1][-K:]
    t0, t1 = 0.5 / 16, 1 - 0.5 / 16
    # 4 - 2t is in the top K at the start and out at the end; 3 + t/2 the other way round.
    assert np.isclose(first, 4 - 2 * t0).any() and not np.isclose(last, 4 - 2 * t1).any()
    assert np.isclose(last, 3 + t1 / 2).any() and not np.isclose(first, 3 + t0 / 2).any()
    # 6 + 2t and 7 - 2t swap order inside it.
    assert first[-3] == pytest.approx(6 + 2 * t0) and last[-2] == pytest.approx(6 + 2 * t1)


@pytest.fixture(scope="module")
def warm_run():
    matrices, spectra = _drifting_matrices()
    cold_start = jr.normal(jr.key(2), (N,), jnp.float64)
    solve = jax.jit(
        lambda matrix, start: _lanczos.warm_eigsh(
            lambda v: matrix @ v,
            start,
            cold_start,
            K,
            num_kept=K + GUARDS,
            max_iterations=N,
            cold_iterations=N,
            tol=1e-12,
        )
    )
    history, count, results = jnp.zeros((3, N)), jnp.asarray(0), []
    for matrix in matrices:
        values, vectors, kept, residuals, products, warm = solve(
            jnp.asarray(matrix), _warm_start(history, count)
        )
        history, count = _push(history, kept), count + 1
        results.append((values, vectors, residuals, int(products), bool(warm)))
    return matrices, spectra, cold_start, results


def test_warm_eigenpairs_match_dense_eigh_through_the_crossings(warm_run):
    matrices, spectra, _, results = warm_run
    for matrix, spectrum, (values, vectors, residuals, _, _) in zip(matrices, spectra, results):
        np.testing.assert_allclose(values, spectrum[-K:], rtol=1e-10)
        dense_values, dense_vectors = np.linalg.eigh(matrix)
        # Each Ritz vector is the dense eigenvector of its eigenvalue (up to sign).
        overlap = np.abs(np.sum(np.asarray(vectors) * dense_vectors[:, -K:], axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-10)
        np.testing.assert_array_less(np.asarray(residuals), 1e-11 * spectrum[-1])


def test_warm_matches_cold_lanczos_and_spends_fewer_products(warm_run):
    matrices, _, cold_start, results = warm_run
    cold = jax.jit(
        lambda matrix: _lanczos.eigsh(
            lambda v: matrix @ v, cold_start, K, max_iterations=N, tol=1e-12
        )
    )
    cold_products = []
    for matrix, (values, _, _, _, _) in zip(matrices, results):
        cold_values, _, _, products = cold(jnp.asarray(matrix))
        np.testing.assert_allclose(values, cold_values, rtol=1e-10)
        cold_products.append(int(products))
    warm_products = [products for *_, products, _ in results]
    # The first solve has no history (cold); after it every warm run passes its test.
    assert [warm for *_, warm in results] == [False] + [True] * (len(results) - 1)
    assert np.mean(warm_products[1:]) < 0.75 * np.mean(cold_products)


@pytest.mark.slow  # compile-heavy (3-12 s); the quick subset keeps its cheaper siblings
def test_a_failed_warm_run_falls_back_to_cold():
    matrices, spectra = _drifting_matrices(num=3)
    matrix = jnp.asarray(matrices[1])
    cold_start = jr.normal(jr.key(2), (N,), jnp.float64)
    # K + GUARDS products cannot certify K pairs from a random start: the test fails, the
    # cold run answers, and both are charged.
    values, vectors, kept, residuals, products, warm = _lanczos.warm_eigsh(
        lambda v: matrix @ v,
        jr.normal(jr.key(5), (N,), jnp.float64),
        cold_start,
        K,
        num_kept=K + GUARDS,
        max_iterations=K + GUARDS,
        cold_iterations=N,
        tol=1e-12,
    )
    assert not bool(warm) and kept.shape == (N, K + GUARDS)
    np.testing.assert_allclose(values, spectra[1][-K:], rtol=1e-10)
    cold = _lanczos.eigsh(lambda v: matrix @ v, cold_start, K, max_iterations=N, tol=1e-12)
    assert int(products) == K + GUARDS + int(cold[3])
