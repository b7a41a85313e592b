"""Property-testing a hand-derived modified flow with `driftlab.testing`.

A user derives heavy-ball's first-order modified flow by hand. Heavy-ball,
theta_{n+1} = theta_n - h m_{n+1}, m_{n+1} = beta m_n + grad L(theta_n), on its slow
manifold: summing the momentum buffer along the flow gives

    d theta / dt = -1/(1 - beta) grad [L + c h ||grad L||^2],  c = (1 + beta) / (4 (1 - beta)^2),

with the buffer at m = g / (1 - beta) + h H g / (1 - beta)^3 (the slow state). Two
plausible mistakes: "momentum is GD at the effective rate h / (1 - beta)", which gives
c = 1 / (4 (1 - beta)), a constant (1 - beta) / (1 + beta) times too small; and a
flipped sign, c = -(1 + beta) / (4 (1 - beta)^2).

Claims checked:
1. the correct derivation passes `assert_coefficients_match` on hypothesis-drawn MLPs
   and momenta, and `assert_order` (local slope 3);
2. the wrong constant is caught by `assert_coefficients_match`, which reports the factor
   (1 - beta) / (1 + beta), and by `assert_order` (slope 2 instead of 3);
3. the wrong sign is caught by both, `assert_coefficients_match` naming it a wrong sign.
"""

import dataclasses
import os
import time
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from hypothesis import given, Phase, settings, strategies as st

import driftlab as dl
import driftlab.testing as dt
from driftlab.plotting import plot_orders

from ._common import finish, parse_args, progress


NAME = "verify_derivation"
BETA = 0.5


class HeavyBallByHand(dl.AbstractFlow):
    """The user's flow: -1/(1 - beta) grad [L + c h ||grad L||^2], c left as a field."""

    loss: typing.Callable
    h: jax.Array = eqx.field(converter=jnp.asarray)
    beta: jax.Array = eqx.field(converter=jnp.asarray)
    c: jax.Array = eqx.field(converter=jnp.asarray)
    order: typing.ClassVar[int] = 1

    def modified_loss(self, y, args):
        grad = jax.grad(self.loss)(y, args)
        penalty = sum(jnp.vdot(g, g) for g in jtu.tree_leaves(grad))
        return (self.loss(y, args) + self.c * self.h * penalty) / (1 - self.beta)

    def __call__(self, t, y, args):
        return jtu.tree_map(jnp.negative, jax.grad(self.modified_loss)(y, args))

    def slow_state(self, params, args):
        """The momentum buffer the iterates carry on the slow manifold, to O(h^2)."""
        grad_fn = lambda p: jax.grad(self.loss)(p, args)  # noqa: E731
        grad, hessian_grad = jax.jvp(grad_fn, (params,), (grad_fn(params),))
        b = 1 - self.beta
        momentum = jtu.tree_map(lambda g, hg: g / b + self.h * hg / b**3, grad, hessian_grad)
        return dl.integrators.MomentumState(params, momentum)


DERIVATIONS = {
    "correct: c = (1 + beta) / (4 (1 - beta)^2)": lambda beta: (1 + beta) / (4 * (1 - beta) ** 2),
    "wrong constant: c = 1 / (4 (1 - beta)), GD at h / (1 - beta)": lambda beta: (
        1 / (4 * (1 - beta))
    ),
    "wrong sign: c = -(1 + beta) / (4 (1 - beta)^2)": lambda beta: (
        -(1 + beta) / (4 * (1 - beta) ** 2)
    ),
}


def coefficient_property(constant, max_examples, hidden):
    """The hypothesis test of a derivation: its expansion in h against the automatic one."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        phases=[Phase.generate],
        database=None,
        derandomize=True,
    )
    @given(dt.mlp_problems(hidden=hidden), st.sampled_from([0.3, 0.5, 0.9]))
    def test(problem, beta):
        make_flow = lambda h: HeavyBallByHand(problem.loss, h, beta, constant(beta))  # noqa: E731
        step = dl.HeavyBall(problem.loss, beta)
        dt.assert_coefficients_match(make_flow, step, 1, problem.params, problem.data)

    return test


def outcome(test) -> tuple[bool, str]:
    """(passed, the AssertionError's message) of a test."""
    try:
        test()
    except AssertionError as error:
        return False, str(error)
    return True, ""


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    problem = dl.problems.mlp_digits(hidden=4, num_samples=64)
    loss, params, data = problem.loss, problem.params, problem.data
    step = dl.HeavyBall(loss, BETA)
    y0 = step.init(params, data)
    lam = dl.lambda_max(loss, params, data)
    edge = (1 - np.sqrt(BETA)) ** 2
    # Inside heavy-ball's slow-manifold region h lambda < (1 - sqrt(beta))^2, above round-off.
    hs = edge / lam * np.geomspace(0.02, 0.32, 4 if args.quick else 5)
    progress(
        f"beta = {BETA}: slow manifold for h lambda_max < {edge:.4f}; lambda_max = {lam:.3f}; "
        f"h lambda_max from {hs[0] * lam:.2e} to {hs[-1] * lam:.2e}"
    )

    results = {}
    for label, constant in DERIVATIONS.items():
        progress(f"{label}: coefficients (hypothesis), then the measured order")
        property_test = coefficient_property(constant, *((1, 3) if args.quick else (10, (2, 4))))
        passed, message = outcome(property_test)
        make_flow = lambda h, c=constant(BETA): HeavyBallByHand(loss, h, BETA, c)  # noqa: E731
        try:
            dt.assert_coefficients_match(make_flow, step, 1, params, data)
            digits_message = ""
        except AssertionError as error:
            digits_message = str(error)
        try:
            estimate = dt.assert_order(step, make_flow, y0, 3, args=data, hs=hs)
            order_message = ""
        except AssertionError as error:
            order_message = str(error)
            estimate = dl.order_of_accuracy(step, make_flow, y0, hs, args=data, expected=3)
        results[label] = {
            "constant": constant(BETA),
            "coefficients_pass_on_drawn_problems": passed,
            "coefficients_message_drawn": message,
            "coefficients_message_digits": digits_message,
            "order_passes": not order_message,
            "order_message": order_message,
            "estimate": estimate,
        }

    correct, constant_off, sign = (results[label] for label in DERIVATIONS)
    expected_ratio = (1 - BETA) / (1 + BETA)
    for label, result in results.items():
        print(f"\n== {label} (c = {result['constant']:.4g} at beta = {BETA})")
        print(f"local slope {result['estimate'].slope:.3f} (expected 3)")
        for key in ("coefficients_message_digits", "order_message"):
            if result[key]:
                print(f"AssertionError: {result[key]}")
        if result["coefficients_pass_on_drawn_problems"]:
            print("assert_coefficients_match passed on every hypothesis-drawn problem")
    checks = {
        "the correct derivation passes assert_coefficients_match (hypothesis) and assert_order": (
            correct["coefficients_pass_on_drawn_problems"]
            and not correct["coefficients_message_digits"]
            and correct["order_passes"]
        ),
        "the wrong constant is caught, with the factor (1 - beta) / (1 + beta) reported": (
            not constant_off["coefficients_pass_on_drawn_problems"]
            and f"is {expected_ratio:.6g} times" in constant_off["coefficients_message_digits"]
        ),
        "the wrong constant is caught by assert_order (slope outside 3 +- 0.3)": not constant_off[
            "order_passes"
        ],
        "the wrong sign is caught by assert_coefficients_match ('a wrong sign')": (
            not sign["coefficients_pass_on_drawn_problems"]
            and "a wrong sign" in sign["coefficients_message_digits"]
        ),
        "the wrong sign is caught by assert_order (slope outside 3 +- 0.3)": not sign[
            "order_passes"
        ],
    }

    estimates = [
        dataclasses.replace(result["estimate"], flow_name=label.split(":")[0])
        for label, result in results.items()
    ]
    os.makedirs(args.output, exist_ok=True)
    plot_orders(
        estimates,
        os.path.join(args.output, "verify_derivation.png"),
        title=f"heavy-ball (beta = {BETA}) on an MLP: one-step error vs a hand-derived flow",
    )
    numbers = {
        "beta": BETA,
        "lambda_max": lam,
        "hs": hs.tolist(),
        "derivations": {
            label: {k: (v.to_dict() if k == "estimate" else v) for k, v in result.items()}
            for label, result in results.items()
        },
    }
    claim = (
        "driftlab.testing accepts a correct hand derivation of heavy-ball's modified flow "
        "and catches a wrong constant and a wrong sign, naming them"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
