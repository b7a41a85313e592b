"""The cost of the expansions at scale, guarded structurally (no timings).

Matrix-product FLOPs and the largest array of each jaxpr (`driftlab._cost`) are
deterministic; the scale benchmark (`benchmarks/scale.py`) times the same calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftlab as dl
from driftlab._cost import jaxpr_cost
from driftlab._tree import grad, ravel
from driftlab.flows._taylor import euler_weighted_iterates, log_weights, weighted_iterates
from driftlab.problems import fc_synthetic


def _network(width):
    return fc_synthetic(width=width, depth=2, input_dim=16, num_outputs=4, num_samples=32)


def _field_cost(problem, order):
    step = dl.GradientDescent(problem.loss)
    flow = dl.ModifiedFlow(step, 0.01, order=order)
    return jaxpr_cost(lambda p, d: flow(0.0, p, d), problem.params, problem.data)


@pytest.mark.parametrize("width", [8, 40])
def test_modified_flow_cost_in_gradients(width):
    # Order 1: G(u) with one linearisation and one tangent pass (a Hessian-vector
    # product's work), at most 3 gradients of matrix products. Order 2: G(u) with one
    # linearisation, one forward-over-forward pass along g (Jg and G''(g, g)) and one
    # tangent pass for J(Jg): at most 12 matrix products per product of the gradient,
    # 8.6 to 10.2 on these networks; the jets of order 2 per iterate it replaced cost
    # 13.0 on every one of them. The same bounds at both widths: the ratios do not grow
    # with the parameter count.
    problem = _network(width)
    n = ravel(problem.params)[0].size
    gradient_flops, gradient_largest = jaxpr_cost(
        lambda p, d: grad(problem.loss, p, d), problem.params, problem.data
    )
    bounds = {1: 3.0, 2: 11.0}
    for order, bound in bounds.items():
        flops, largest = _field_cost(problem, order)
        assert flops <= bound * gradient_flops, (order, flops / gradient_flops)
        # Nothing quadratic in n: no array beyond the state vector or the gradient's own
        # intermediates (a dense n x n Jacobian, or the iterates stacked, would be).
        assert largest <= max(n, gradient_largest), (order, largest, n)


@pytest.mark.slow
@pytest.mark.parametrize("order", [3, 4])
def test_euler_expansion_on_the_tree_matches_jets_of_the_whole_map(order):
    # The Euler route on the parameters' own arrays (closed form from four products at
    # order 3, one jet of G per iterate, through `_tree_jet`, at order 4) against the
    # generic route: a jet of the whole map per iterate on the ravelled vector, on an MLP.
    problem = _network(12)
    flat, unravel = ravel(problem.params)
    field = lambda tree: jax.tree_util.tree_map(
        jnp.negative, grad(problem.loss, tree, problem.data)
    )
    step = lambda u, h: u + h * ravel(field(unravel(u)))[0]
    weights = log_weights(order)[1:]
    on_tree = euler_weighted_iterates(field, problem.params, order, weights)
    _, jets = weighted_iterates(step, flat, None, order, weights)
    assert len(on_tree) == len(jets) == order
    for a, b in zip(on_tree, jets):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(ravel(a)[0] - b))) <= 1e-12 * scale


@pytest.mark.slow
def test_lanczos_reports_products_and_a_certified_bound():
    # Some eigenvalue lies within the residual of the Ritz value (symmetric H): checked
    # against dense eigh; and `num_products` counts the products the run spent.
    problem = _network(10)
    flat, unravel = ravel(problem.params)
    tol = 1e-6
    spectrum = dl.hessian_eigenpairs(
        problem.loss, problem.params, problem.data, method="lanczos", tol=tol
    )
    hessian = jax.hessian(lambda x: problem.loss(unravel(x), problem.data))(flat)
    exact = np.linalg.eigvalsh(np.asarray(hessian))[-1]
    ritz, residual = spectrum.eigenvalues[-1], spectrum.residuals[-1]
    assert residual <= tol * abs(ritz)
    assert abs(ritz - exact) <= residual
    # It stopped at a convergence check (every 4 products) before the cap of 101, and the
    # check 4 products earlier had failed: capped there, the run's residual is too large.
    spent = spectrum.num_products
    assert spent % 4 == 0 and 4 < spent < 101
    earlier = dl.hessian_eigenpairs(
        problem.loss,
        problem.params,
        problem.data,
        method="lanczos",
        tol=tol,
        max_iterations=spent - 4,
    )
    assert earlier.num_products == spent - 4
    assert earlier.residuals[-1] > tol * abs(earlier.eigenvalues[-1])
