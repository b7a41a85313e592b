"""Weak order of the SMEs of SGD on logistic regression on digits, by Monte Carlo.

SGD draws one of m fixed batches per step (with replacement); phi is the full-data loss
at time t_end. For each step size h: `num_samples` SGD runs, `num_sde_samples` SME paths
(Euler–Maruyama at h, h/2, h/4 on one Brownian tree each, extrapolated twice), the weak
error with its Monte Carlo standard error and solver error, and a slope fit on the points
clearly above their floors. Also the throughput of SGD and of the SME (samples per
second, one run). Writes `benchmarks/results/sme_weak_order.{json,md}`. Run:
`python -m benchmarks.sme_weak_order [--quick]` (a few minutes on 2 idle cores).
"""

import argparse
import os
import sys

import numpy as np

from driftlab._io import machine_info, write_json_atomic
from driftlab.cli._weak import run_weak

from ._common import command_line, markdown_table, Progress, RESULTS_DIR, write_text_atomic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--output", default=RESULTS_DIR)
    options = parser.parse_args()
    progress = Progress()
    hs = np.array([0.05, 0.1, 0.2, 0.4])
    num_samples, num_sde = (4000, 200) if options.quick else (40000, 1000)
    progress(f"logistic digits, 64 samples in 8 batches; h = {hs.tolist()}; t = 0.8")
    estimates, setting = run_weak(
        "logistic",
        [1, 2],
        hs,
        0.8,
        num_batches=8,
        num_samples=num_samples,
        num_sde_samples=num_sde,
        problem_kwargs={"num_samples": 64},
    )
    progress("measured")
    rows = []
    for e in estimates:
        for i, h in enumerate(e.hs):
            rows.append(
                [
                    e.sde_name,
                    h,
                    e.signed_errors[i],
                    e.stderrs[i],
                    e.solver_errors[i],
                    "yes" if e.used[i] else "no (floor)",
                ]
            )
    fits = [
        [
            e.sde_name,
            e.slope,
            e.slope_stderr,
            f"[{e.confidence_interval[0]:.2f}, {e.confidence_interval[1]:.2f}]",
            e.constant,
            int(e.used.sum()),
            e.expected,
        ]
        for e in estimates
    ]
    rates = [(e.sgd_samples_per_second, e.sde_samples_per_second) for e in estimates]
    argv = sys.argv[1:]
    text = "\n\n".join(
        [
            "# Weak order of the stochastic modified equations (logistic digits)",
            f"Command: `{command_line('benchmarks.sme_weak_order', argv)}`. {setting['sampling']}; "
            f"phi = full-data loss at t = {setting['t_end']}; {num_samples} SGD runs and "
            f"{num_sde} SME paths per step size.",
            markdown_table(
                ["SME", "h", "E L(SGD) - E L(SME)", "MC stderr", "solver error", "used"], rows
            ),
            markdown_table(
                ["SME", "slope", "stderr", "95% CI", "constant C", "points", "expected"], fits
            ),
            "Throughput (median over h, compiled, measured in this run): SGD "
            f"{rates[0][0]:.0f} samples/s; SME order 1 {rates[0][1]:.1f} and order 2 "
            f"{rates[1][1]:.1f} paths/s (each path solved at three Euler–Maruyama levels).",
        ]
    )
    print(text)
    write_text_atomic(text + "\n", os.path.join(options.output, "sme_weak_order.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": command_line("benchmarks.sme_weak_order", argv),
            **setting,
            "estimates": [e.to_dict() for e in estimates],
        },
        os.path.join(options.output, "sme_weak_order.json"),
    )
    progress(f"wrote {options.output}/sme_weak_order.{{json,md}}")


if __name__ == "__main__":
    main()
