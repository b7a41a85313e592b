"""Callisti, Romito & Triggiano's Table 1: weak order of RMSProp's SDEs (orders 1 and 2), d = 6.

Minibatch RMSProp (`RandomBatch(RMSProp(loss, rho=1 - c h, eps))`, one of m quadratic
batches per step) against `RMSPropSME` of order 1 and 2 in the scaling 1 - rho = c h,
with the test functions |theta|^2 and |nu|^2 of the paper's table at t_end = 1. The
batches share the mean quadratic and spread around it by `SPREAD` times those of
`driftlab.problems.quadratic_batches`, and theta starts far from the minimiser: the
O(h) and O(h^2) drift terms then stand clear of the Monte Carlo noise, whose standard
error falls only like sqrt(h / samples), at a modest sample count; nu starts at
E g_B^2 and stays far from -eps, where the SDE's Gaussian noise could take it. Each
point: `num_samples` RMSProp runs and as many SDE paths (Euler–Maruyama at three levels,
extrapolated), both test functions from the same paths, each difference with its own
standard error; slopes are fitted on the points clearly above their floors. Writes
`benchmarks/results/rmsprop_weak_table.{json,md}`. Run:
`python -m benchmarks.rmsprop_weak_table [--quick] [--samples N] [--hs ...] [--orders ...]
[--optimiser adam] [--spread S] [--name STEM]` (`--optimiser adam --orders 1`: `AdamSME` against
`RandomBatch(Adam(..., bias_correction=False))` at 1 - b_i = c_i h, into
`adam_weak_order.{json,md}`; `--spread 0 --samples 2 --name rmsprop_noise_free`: the
same problem without noise, where the SDEs are ODEs and the errors carry no Monte Carlo
floor) (the |theta|^2 order-2 row needs more paths at fewer step sizes:
`--orders 2 --hs 0.5 0.25 0.125 --samples 48000 --name rmsprop_weak_table_theta`).
"""

import argparse
import os
import sys

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic
from driftlab.analysis import weak_error, WeakOrderEstimate
from driftlab.flows import AdamSME, RMSPropSME
from driftlab.integrators import AdamState, RandomBatch, RMSPropState

from ._common import command_line, markdown_table, Progress, RESULTS_DIR, write_text_atomic


DIM, NUM_BATCHES, SPREAD, DECAY_RATE, EPS, T_END = 6, 8, 0.05, 1.0, 1.0, 1.0
#: Adam's decay rates (1 - b1, 1 - b2) / h for `--optimiser adam` (order 1 only).
ADAM_RATES = (2.0, 1.0)
TEST_NAMES = ("|theta|^2", "|nu|^2")


def squares(state):
    """The paper's two test functions, from one path: (|theta|^2, |nu|^2)."""
    return jnp.stack([jnp.sum(state.params**2), jnp.sum(state.nu**2)])


def problem(optimiser: str, spread: float):
    """The batches, the start (buffers at E g_B and E g_B^2) and the pair `h -> (map, SDE)`."""
    raw = dl.problems.quadratic_batches(DIM, NUM_BATCHES, linear_terms=True, seed=3)[1]
    batches = {k: v.mean(0) + spread * (v - v.mean(0)) for k, v in raw.items()}
    theta = 3 * np.random.default_rng(0).standard_normal(DIM)
    grads = np.einsum("kij,j->ki", np.asarray(batches["A"]), theta) - np.asarray(batches["b"])
    theta, mu, nu = (jnp.asarray(x) for x in (theta, grads.mean(0), (grads**2).mean(0)))
    loss = dl.problems.quadratic_loss
    if optimiser == "adam":
        c1, c2 = ADAM_RATES

        def pair(h, order):
            adam = dl.Adam(loss, 1 - c1 * h, 1 - c2 * h, EPS, True, bias_correction=False)
            return RandomBatch(adam), AdamSME(loss, batches, h, ADAM_RATES, EPS, True, order)

        return batches, AdamState(theta, mu, nu, None), pair

    def pair(h, order):
        rmsprop = RandomBatch(dl.RMSProp(loss, rho=1 - DECAY_RATE * h, eps=EPS))
        return rmsprop, RMSPropSME(loss, batches, h, DECAY_RATE, EPS, order=order)

    return batches, RMSPropState(theta, nu), pair


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="paths per point and side")
    parser.add_argument("--hs", type=float, nargs="+", default=[1 / 2, 1 / 4, 1 / 8, 1 / 16])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--optimiser", choices=["rmsprop", "adam"], default="rmsprop")
    parser.add_argument(
        "--spread",
        type=float,
        default=SPREAD,
        help="spread of the batches around their mean (0: no noise, the SDE an ODE)",
    )
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--output", default=RESULTS_DIR)
    options = parser.parse_args()
    progress = Progress()
    hs = np.array(options.hs)
    num_samples = options.samples or (2000 if options.quick else 12000)
    if options.optimiser == "adam" and options.orders != [1]:
        parser.error("AdamSME has weak order 1 only: pass `--orders 1`")
    stem = (
        options.name
        or {"rmsprop": "rmsprop_weak_table", "adam": "adam_weak_order"}[options.optimiser]
    )
    optimiser = {"rmsprop": "RMSProp", "adam": "Adam"}[options.optimiser]
    scaling = {
        "rmsprop": f"1 - rho = {DECAY_RATE} h",
        "adam": f"1 - b1 = {ADAM_RATES[0]} h, 1 - b2 = {ADAM_RATES[1]} h, no bias correction",
    }[options.optimiser]
    title = {
        "rmsprop": "# Weak order of RMSProp's SDEs (Callisti, Romito & Triggiano 2025, Table 1)",
        "adam": "# Weak order of Adam's SDE (Malladi et al. 2022 scaling of 1 - b_i)",
    }[options.optimiser]
    batches, start, pair = problem(options.optimiser, options.spread)
    progress(
        f"{optimiser} on {NUM_BATCHES} quadratic batches in d = {DIM} (spread {options.spread}), "
        f"{scaling}, eps = {EPS}; h = {hs.tolist()}; t = {T_END}; "
        f"{num_samples} paths per side"
    )
    max_steps = int(round(T_END / hs.min())) * 2 * 4 + 1
    points = {order: [] for order in options.orders}
    for i, h in enumerate(hs):
        for order in options.orders:
            step, sde = pair(h, order)
            point = weak_error(
                step, sde, start, float(h), T_END, squares, num_samples,
                jr.fold_in(jr.key(order), i), chunk_size=4096, max_steps=max_steps,
            )  # fmt: skip
            points[order].append(point)
            progress(f"h = {h:g}, order {order}: differences "
                     f"{(point.sgd_expectation - point.sde_expectation).round(5).tolist()} "
                     f"+- {point.component_stderrs.round(5).tolist()}")  # fmt: skip
    estimates, rows = [], []
    for order, runs in points.items():
        for c, name in enumerate(TEST_NAMES):
            signed = np.array([p.sgd_expectation[c] - p.sde_expectation[c] for p in runs])
            estimate = WeakOrderEstimate.fit(
                hs,
                np.abs(signed),
                expected=order,
                stderrs=[p.component_stderrs[c] for p in runs],
                solver_errors=[p.component_solver_errors[c] for p in runs],
                t_end=T_END,
                strict=False,
                sde_name=f"{optimiser}SME(order={order})",
                map_name=f"RandomBatch({optimiser})",
                test_name=name,
                num_samples=num_samples,
                signed_errors=signed[np.argsort(hs)],
            )
            estimates.append(estimate)
            rows += [
                [
                    estimate.sde_name,
                    name,
                    h,
                    estimate.signed_errors[j],
                    estimate.stderrs[j],
                    estimate.solver_errors[j],
                    "yes" if estimate.used[j] else "no (floor)",
                ]
                for j, h in enumerate(estimate.hs)
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
            title,
            f"Command: `{command_line('benchmarks.rmsprop_weak_table', argv)}`. {optimiser} on "
            f"{NUM_BATCHES} quadratic batches in d = {DIM} (one batch per step; spread "
            f"{options.spread} around their mean), {scaling}, eps = {EPS} inside the root; test "
            f"functions |theta|^2 and |nu|^2 at t = {T_END}; {num_samples} {optimiser} runs "
            "and SDE paths per step size (both test functions from the same paths).",
            markdown_table(
                [
                    "SDE",
                    "phi",
                    "h",
                    f"E phi({optimiser}) - E phi(SDE)",
                    "MC stderr",
                    "solver",
                    "used",
                ],
                rows,
            ),
            markdown_table(["SDE", "phi", "slope", "stderr", "95% CI", "points", "expected"], fits),
        ]
    )
    print(text)
    write_text_atomic(text + "\n", os.path.join(options.output, f"{stem}.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": command_line("benchmarks.rmsprop_weak_table", argv),
            "dim": DIM,
            "num_batches": NUM_BATCHES,
            "spread": options.spread,
            "optimiser": options.optimiser,
            "scaling": scaling,
            "eps": EPS,
            "t_end": T_END,
            "num_samples": num_samples,
            "estimates": [e.to_dict() for e in estimates],
        },
        os.path.join(options.output, f"{stem}.json"),
    )
    progress(f"wrote {options.output}/{stem}.{{json,md}}")


if __name__ == "__main__":
    main()
