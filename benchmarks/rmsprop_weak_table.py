"""Callisti, Romito & Triggiano's Table 1: weak order of RMSProp's SDEs (orders 1 and 2), d = 6.

Minibatch RMSProp (`RandomBatch(RMSProp(loss, rho=1 - c h, eps))`, one of m quadratic
batches per step) against `RMSPropSME` of order 1 and 2 in the scaling 1 - rho = c h,
with the test functions |theta|^2 and |nu|^2 of the paper's table, at t_end = 1. Each
point: `num_samples` RMSProp runs and as many SDE paths (Euler–Maruyama at three levels,
extrapolated), the weak error with its Monte Carlo standard error and solver error; the
slope is fitted on the points clearly above their floors. Writes
`benchmarks/results/rmsprop_weak_table.{json,md}`. Run:
`python -m benchmarks.rmsprop_weak_table [--quick] [--samples N]`.
"""

import argparse
import os
import sys
import warnings

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import driftlab as dl
from driftlab._errors import RoundoffWarning
from driftlab._io import machine_info, write_json_atomic
from driftlab.analysis import weak_order_of_accuracy
from driftlab.flows import RMSPropSME
from driftlab.integrators import RandomBatch, RMSPropState

from ._common import command_line, markdown_table, Progress, RESULTS_DIR, write_text_atomic


DIM, NUM_BATCHES, DECAY_RATE, EPS, T_END = 6, 8, 1.0, 0.1, 1.0


def squared_theta(state):
    return jnp.sum(state.params**2)


def squared_nu(state):
    return jnp.sum(state.nu**2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="paths per point and side")
    parser.add_argument("--output", default=RESULTS_DIR)
    options = parser.parse_args()
    progress = Progress()
    hs = np.array([1 / 16, 1 / 8, 1 / 4, 1 / 2])
    num_samples = options.samples or (4000 if options.quick else 100000)
    batches = dl.problems.quadratic_batches(DIM, NUM_BATCHES, linear_terms=True, seed=3)[1]
    loss = dl.problems.quadratic_loss
    start = RMSPropState(jnp.asarray(np.random.default_rng(0).standard_normal(DIM)), jnp.ones(DIM))

    def make_step(h):
        return RandomBatch(dl.RMSProp(loss, rho=1 - DECAY_RATE * h, eps=EPS))

    progress(
        f"RMSProp on {NUM_BATCHES} quadratic batches in d = {DIM}, 1 - rho = {DECAY_RATE} h, "
        f"eps = {EPS}; h = {hs.tolist()}; t = {T_END}; {num_samples} paths per side"
    )
    estimates = []
    for order in (1, 2):
        for test_fn in (squared_theta, squared_nu):

            def make_sde(h, order=order):
                return RMSPropSME(loss, batches, h, DECAY_RATE, EPS, order=order)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RoundoffWarning)  # floors are reported below
                estimate = weak_order_of_accuracy(
                    make_step,
                    make_sde,
                    start,
                    hs,
                    T_END,
                    test_fn,
                    num_samples,
                    jr.key(10 * order + len(estimates)),
                    strict=False,
                    chunk_size=4096,
                )
            estimates.append(estimate)
            progress(f"order {order}, {test_fn.__name__}: slope {estimate.slope:.2f}")
    rows = [
        [
            e.sde_name,
            e.test_name,
            h,
            e.signed_errors[i],
            e.stderrs[i],
            e.solver_errors[i],
            "yes" if e.used[i] else "no (floor)",
        ]
        for e in estimates
        for i, h in enumerate(e.hs)
    ]
    fits = [
        [
            e.sde_name,
            e.test_name,
            e.slope,
            e.slope_stderr,
            f"[{e.confidence_interval[0]:.2f}, {e.confidence_interval[1]:.2f}]",
            int(e.used.sum()),
            e.expected,
        ]
        for e in estimates
    ]
    argv = sys.argv[1:]
    text = "\n\n".join(
        [
            "# Weak order of RMSProp's SDEs (Callisti, Romito & Triggiano 2025, Table 1)",
            f"Command: `{command_line('benchmarks.rmsprop_weak_table', argv)}`. RMSProp on "
            f"{NUM_BATCHES} quadratic batches in d = {DIM} (one batch per step), 1 - rho = "
            f"{DECAY_RATE} h, eps = {EPS} inside the root; test functions |theta|^2 and |nu|^2 "
            f"at t = {T_END}; {num_samples} RMSProp runs and SDE paths per point.",
            markdown_table(
                ["SDE", "phi", "h", "E phi(RMSProp) - E phi(SDE)", "MC stderr", "solver", "used"],
                rows,
            ),
            markdown_table(["SDE", "phi", "slope", "stderr", "95% CI", "points", "expected"], fits),
        ]
    )
    print(text)
    write_text_atomic(text + "\n", os.path.join(options.output, "rmsprop_weak_table.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": command_line("benchmarks.rmsprop_weak_table", argv),
            "dim": DIM,
            "num_batches": NUM_BATCHES,
            "decay_rate": DECAY_RATE,
            "eps": EPS,
            "t_end": T_END,
            "num_samples": num_samples,
            "estimates": [e.to_dict() for e in estimates],
        },
        os.path.join(options.output, "rmsprop_weak_table.json"),
    )
    progress(f"wrote {options.output}/rmsprop_weak_table.{{json,md}}")


if __name__ == "__main__":
    main()
