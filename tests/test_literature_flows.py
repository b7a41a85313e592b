"""SGD, exact-batch SGD and the explicit regularisers: closed forms, ModifiedFlow, orders."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import driftlab as dl
from driftlab.flows import ModifiedFlow

from . import helpers
from .literature_helpers import (
    error_ratio,
    linear_coefficients,
    tiny_mlp,
)


LOSS = dl.problems.quadratic_loss


def _epoch_matrix(mats, h, order=None):
    order = range(len(mats)) if order is None else order
    m = np.eye(mats.shape[1])
    for k in order:
        m = (np.eye(mats.shape[1]) - h * mats[k]) @ m
    return m


def test_exact_batch_sgd_matches_matrix_logarithm():
    mats, batches = dl.problems.quadratic_batches()
    m = len(mats)
    y = jnp.asarray(np.random.default_rng(1).standard_normal(mats.shape[1]))

    def error(h):
        exact = scipy.linalg.logm(_epoch_matrix(mats, h)).real / (m * h) @ np.asarray(y)
        flow = np.asarray(dl.ExactBatchSGDFlow(LOSS, h)(0.0, y, batches))
        return np.linalg.norm(flow - exact)

    # Order 1 in the field: O(h^2) away from (1/mh) logm(epoch map). Measured ratio 4.0.
    assert 3.8 < error_ratio(error, 1e-2) < 4.2

    # The flow with formulas.md's f_1 but the antisymmetric sum dropped is only O(h).
    def error_without_antisymmetric(h):
        exact = scipy.linalg.logm(_epoch_matrix(mats, h)).real / (m * h) @ np.asarray(y)
        return np.linalg.norm(np.asarray(dl.SGDFlow(LOSS, h)(0.0, y, batches)) - exact)

    assert 1.8 < error_ratio(error_without_antisymmetric, 1e-2) < 2.2


def test_sgd_flow_matches_the_order_averaged_epoch():
    mats, batches = dl.problems.quadratic_batches()
    m, n = mats.shape[:2]
    y = np.random.default_rng(2).standard_normal(n)

    def error(h):
        mean_map = np.mean(
            [_epoch_matrix(mats, h, p) for p in itertools.permutations(range(m))], axis=0
        )
        field = -mats.mean(0) - h / (2 * m) * sum(a @ a for a in mats)
        # The closed form is driftlab's SGDFlow on these batches.
        flow = np.asarray(dl.SGDFlow(LOSS, h)(0.0, jnp.asarray(y), batches))
        assert np.allclose(flow, field @ y, rtol=1e-13, atol=0)
        return np.linalg.norm(mean_map @ y - scipy.linalg.expm(m * h * field) @ y)

    # Local error of an order-1 flow against the averaged epoch: O(h^3). Measured 8.0.
    assert 7.6 < error_ratio(error, 1e-2) < 8.4


@pytest.mark.slow
def test_antisymmetric_part_and_modified_losses():
    problem = tiny_mlp()
    batches = problem.batches(3)
    h = 0.05
    exact = dl.ExactBatchSGDFlow(problem.loss, h)
    sgd = dl.SGDFlow(problem.loss, h)
    y = problem.params
    difference = jax.tree_util.tree_map(
        lambda a, b: a - b, exact(0.0, y, batches), sgd(0.0, y, batches)
    )
    antisymmetric = jax.tree_util.tree_map(lambda a: h * a, exact.antisymmetric_part(y, batches))
    assert helpers.relative_error(difference, antisymmetric) < 1e-12
    # Averaged over all orders, the antisymmetric part vanishes.
    antisymmetric_part = eqx.filter_jit(exact.antisymmetric_part)
    parts = [
        antisymmetric_part(y, jax.tree_util.tree_map(lambda x: x[np.array(p)], batches))
        for p in itertools.permutations(range(3))
    ]
    mean = jax.tree_util.tree_map(lambda *xs: sum(xs) / len(xs), *parts)
    assert float(dl._tree.tree_norm(mean)) < 1e-14 * float(dl._tree.tree_norm(parts[0]))
    # SGDFlow is -grad of its modified loss, which sgd_loss and the gradient part share.
    gradient = jax.grad(sgd.modified_loss)(y, batches)
    assert (
        helpers.relative_error(jax.tree_util.tree_map(jnp.negative, gradient), sgd(0.0, y, batches))
        < 1e-12
    )
    assert np.isclose(dl.sgd_loss(problem.loss, h)(y, batches), sgd.modified_loss(y, batches))
    assert np.isclose(exact.gradient_part_loss(y, batches), sgd.modified_loss(y, batches))
    # L_SGD = L_IGR + (h/4m) sum ||g_k - g||^2 (formulas.md), and the small-h*lambda
    # form of Beneventano's without-replacement regulariser is the same loss.
    without = dl.flows.sgd_without_replacement_loss(problem.loss, h)(y, batches)
    assert np.isclose(without, sgd.modified_loss(y, batches), rtol=1e-13)
    with pytest.raises(dl.InputError, match="not a gradient flow"):
        exact.modified_loss(y, batches)


def test_exact_batch_sgd_agrees_with_modified_flow():
    mats, batches = dl.problems.quadratic_batches()
    y = jnp.asarray(np.random.default_rng(3).standard_normal(mats.shape[1]))
    automatic = ModifiedFlow(dl.SGDEpoch(LOSS), 0.1, order=1).coefficients(y, batches)
    mine = linear_coefficients(lambda h: dl.ExactBatchSGDFlow(LOSS, h), y, batches)
    for a, b in zip(mine, automatic):
        assert helpers.relative_error(a, b) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "global"])
def test_sgd_flow_orders_on_mlp(kind):
    problem = helpers.small_mlp()
    batches = problem.batches(2)
    hs = [0.2, 0.1, 0.05]
    for step, make_flow in [
        (dl.SGDEpoch(problem.loss), lambda h: dl.ExactBatchSGDFlow(problem.loss, h)),
        (dl.OrderAveragedSGDEpoch(problem.loss), lambda h: dl.SGDFlow(problem.loss, h)),
    ]:
        estimate = dl.order_of_accuracy(
            step, make_flow, problem.params, hs, kind, batches, t_end=0.6
        )
        # Measured (local, global): exact-batch 2.98 / 2.0, SGD flow vs averaged 2.99 / 2.0.
        assert estimate.agrees(0.25), str(estimate)


def test_input_errors():
    problem = helpers.small_mlp()
    with pytest.raises(dl.InputError, match="stack of batches"):
        dl.SGDFlow(problem.loss, 0.1)(0.0, problem.params, {"x": jnp.zeros(3), "y": 1.0})
    with pytest.raises(dl.InputError, match="`h`"):
        dl.igr_loss(problem.loss, -1.0)
