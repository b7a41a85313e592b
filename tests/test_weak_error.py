r"""`weak_error`'s Richardson extrapolation, solver-error estimate and standard error, exactly.

On a one-parameter quadratic the SME is an Ornstein–Uhlenbeck process,
$d\theta = -(\theta - a)\,dt + \sigma\,dW$, and Euler–Maruyama at step $d$ has the
closed-form mean $a + (1 - d)^{T/d}(\theta_0 - a)$ and variance
$\sigma^2 d \sum_{k<T/d} (1 - d)^{2k}$: independent values for every number
`weak_error` extrapolates or estimates (Talay & Tubaro 1990).
"""

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import driftlab as dl
from driftlab.flows import StochasticModifiedEquation
from driftlab.integrators import RandomBatchSGD


THETA0, H, T_END, SUBSTEPS = 3.0, 0.1, 1.0, 2


def _loss(theta, batch):
    return 0.5 * jnp.mean((theta[0] - batch) ** 2)


def _point(examples, num_samples):
    step = RandomBatchSGD(_loss, batch_size=1, replacement=True, examples=True)
    sde = StochasticModifiedEquation.of(step, examples, H, 1)
    y0 = jnp.array([THETA0])
    return dl.weak_error(step, sde, y0, H, T_END, lambda p: p[0], num_samples, jr.key(0))


def _em_mean(a, d):
    return a + (1 - d) ** round(T_END / d) * (THETA0 - a)


def test_extrapolated_mean_and_solver_error_match_the_closed_form():
    # Identical examples: no noise, the SME is dθ = -(θ - a) dt and every path is the mean.
    a = 2.0
    point = _point(jnp.full((4,), a), 2)
    dt = H / SUBSTEPS
    levels = [_em_mean(a, dt / 2**k) for k in range(3)]
    richardson = lambda coarse, fine: 2 * fine - coarse
    fine, coarse = richardson(levels[1], levels[2]), richardson(levels[0], levels[1])
    np.testing.assert_allclose(point.sde_expectation, [fine], rtol=1e-12)
    # The estimate |T(dt) - T(dt/2)| / 3 against the true error of T(dt/2), e^{-T} known.
    exact = a + np.exp(-T_END) * (THETA0 - a)
    true_error = abs(fine - exact)
    assert abs(point.solver_error - true_error) < 0.15 * true_error, (
        point.solver_error,
        true_error,
    )
    np.testing.assert_allclose(point.solver_error, abs(coarse - fine) / 3, rtol=1e-9)
    assert point.stderr == 0.0
    np.testing.assert_allclose(point.error, abs(_em_mean(a, H) - fine), rtol=1e-9)


def test_standard_error_is_that_of_the_mean_over_samples():
    examples = jnp.array([1.0, 2.0, 3.0, 6.0])
    num_samples = 400
    point = _point(examples, num_samples)
    spread = float(jnp.var(examples))  # Σ, the per-example gradients' variance (batch of 1)
    steps = round(T_END / H)
    # SGD: θ_{n+1} - a = (1 - h)(θ_n - a) + h ξ_n with Var ξ = Σ; the SDE: σ² = h Σ.
    sgd_var = H**2 * spread * sum((1 - H) ** (2 * k) for k in range(steps))
    sde_var = H * spread * (1 - np.exp(-2 * T_END)) / 2
    expected = np.sqrt((sgd_var + sde_var) / num_samples)
    assert abs(point.stderr - expected) < 0.15 * expected, (point.stderr, expected)
