"""CentralFlow.integrate with warm-started eigensolves against cold ones, at the edge."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl


def _stacked_flat(ws):
    """A stacked PyTree of states as an array of ravelled states, one a row."""
    return np.asarray(jax.vmap(lambda w: ravel_pytree(w)[0])(ws))


def _relative_distance(ws, reference):
    ws, reference = np.asarray(ws), np.asarray(reference)
    travelled = np.linalg.norm(reference[1:] - reference[0], axis=1)
    return np.linalg.norm(ws[1:] - reference[1:], axis=1) / travelled


@pytest.mark.slow
def test_warm_starts_follow_the_cold_flow_on_the_authors_example():
    # The authors' network and data (benchmarks/central_flow_sidebyside.py) with a larger
    # h, so that the edge (X != 0) is reached early in the 200 steps.
    from benchmarks.central_flow_sidebyside import problem

    loss, p0, data = problem()
    flow = dl.CentralFlow(loss, 0.25, k=5)
    cold_ws, cold = flow.integrate(p0, 200, data, warm_start=False)
    warm_ws, warm = flow.integrate(p0, 200, data, warm_start=True)
    at_edge = np.trace(np.asarray(cold.X), axis1=1, axis2=2) > 0
    assert at_edge.sum() > 100  # the flow spends most of the run at the edge
    assert np.max(_relative_distance(warm_ws, cold_ws)) < 1e-6
    np.testing.assert_allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-9)
    # The point of the warm starts: fewer Hessian-vector products (about a third).
    assert np.mean(warm.lanczos_products[:-1]) < 0.5 * np.mean(cold.lanczos_products[:-1])


@pytest.mark.slow
def test_warm_starts_follow_the_cold_flow_on_a_small_mlp():
    from .test_central_flow import _swish_mlp

    loss, params, data = _swish_mlp()
    h = 1.5 / dl.lambda_max(loss, params, data)
    flow = dl.CentralFlow(loss, h, k=2)
    cold_ws, cold = flow.integrate(params, 25, data, warm_start=False)
    warm_ws, warm = flow.integrate(params, 25, data)
    assert np.any(np.asarray(cold.X) != 0)  # the edge is reached
    distance = _relative_distance(_stacked_flat(warm_ws), _stacked_flat(cold_ws))
    assert np.max(distance) < 1e-6
    # Each saved point carries its step's four substeps: at least k products each.
    assert np.all(np.asarray(warm.lanczos_products[:-1]) >= 4 * 2)


@pytest.mark.slow
def test_rmsprop_warm_starts_follow_the_cold_flow():
    # The preconditioned eigenproblem moves with nu as well as with w; same check.
    from .test_central_flow import _swish_mlp

    loss, params, data = _swish_mlp()
    nu0 = jax.tree.map(lambda g: g**2, jax.grad(loss)(params, data))
    flow = dl.RMSPropCentralFlow(loss, 0.02, rho=0.9, eps=0.0, eps_inside_sqrt=False, k=2)
    y0 = dl.integrators.RMSPropState(params, nu0)
    cold_ys, cold = flow.integrate(y0, 40, data, warm_start=False)
    warm_ys, warm = flow.integrate(y0, 40, data)
    assert np.any(np.asarray(cold.X) != 0)  # the edge is reached
    distance = _relative_distance(_stacked_flat(warm_ys), _stacked_flat(cold_ys))
    assert np.max(distance) < 1e-6
    assert np.mean(warm.lanczos_products[:-1]) < np.mean(cold.lanczos_products[:-1])
