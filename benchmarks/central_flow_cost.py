"""What one GD step of `CentralFlow.integrate` costs, cold and warm-started, in one run.

Two settings. (1) The authors' example (`central_flow_sidebyside.problem`: swish MLP
8-16-16-1, 433 parameters, h = 0.1, k = 5, four substeps, 1000 steps): Hessian-vector
products per GD step for the eigensolves, the third-derivative products beside them,
the warm trajectory against the cold one, and the wall clock of both (each timed on
its second call, after compilation). (2) `fc-digits` (tanh MLP, 200 x 2, MSE) at the
edge from the start (h = 2 / lambda_max(w0)): seconds per GD step of the flow in units
of one jitted gradient evaluation, cold and warm.

The side-by-side with the authors' port (`central_flow_sidebyside.py`) needs their code
in a scratch environment; this script compares driftlab with itself, so it runs anywhere.
Ratios only: both arms run in the same process, one after the other.

    python -m benchmarks.central_flow_cost [--steps 1000] [--digits-steps 20]

Writes `benchmarks/results/central_flow_cost.{json,md}`. Not part of CI.
"""

import argparse
import os
import time

import jax
import numpy as np

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic
from driftlab._tree import ravel
from driftlab.flows._central import EIGEN_TOL, GUARDS, WARM_TOL

from ._common import fmt, markdown_table, RESULTS_DIR, write_text_atomic
from .central_flow_sidebyside import problem


SUBSTEPS = 4


def _timed(flow, y0, steps, data, warm_start):
    """`(ys, quantities, seconds, first_call_seconds)`: the second call is timed."""
    tic = time.perf_counter()
    jax.block_until_ready(flow.integrate(y0, steps, data, substeps=SUBSTEPS, warm_start=warm_start))
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    ys, quantities = flow.integrate(y0, steps, data, substeps=SUBSTEPS, warm_start=warm_start)
    jax.block_until_ready(ys)
    return ys, quantities, time.perf_counter() - tic, first


def _products_per_step(quantities) -> float:
    # Each saved point carries the products of the substeps of the step that starts there.
    return float(np.mean(np.asarray(quantities.lanczos_products)[:-1]))


def authors_example(steps: int, k: int = 5, h: float = 0.1) -> dict:
    loss, p0, data = problem()
    flow = dl.CentralFlow(loss, h, k=k)
    arms = {}
    for name, warm in (("cold", False), ("warm", True)):
        print(f"authors' example, {name} ...", flush=True)
        ys, quantities, seconds, first = _timed(flow, p0, steps, data, warm)
        arms[name] = {
            "ys": np.asarray(ys),
            "sharpness": h * np.asarray(quantities.eigenvalues)[:, -1],
            "products": _products_per_step(quantities),
            "seconds": seconds,
            "first_call": first,
        }
    cold, warm = arms["cold"], arms["warm"]
    travelled = np.linalg.norm(cold["ys"][1:] - np.asarray(p0), axis=1)
    relative = np.linalg.norm(warm["ys"][1:] - cold["ys"][1:], axis=1) / travelled
    third = SUBSTEPS * k * (k + 1) // 2
    return {
        "setting": {
            "network": "swish MLP 8-16-16-1 (the authors' example)",
            "parameters": int(p0.size),
            "h": h,
            "k": k,
            "steps": steps,
            "substeps": SUBSTEPS,
            "guards": GUARDS,
            "cold_tol": EIGEN_TOL,
            "warm_tol": WARM_TOL,
        },
        "eigensolver_hvps_per_gd_step": {
            "cold": cold["products"],
            "warm": warm["products"],
            # Before the warm starts, `integrate` also re-solved every saved point cold.
            "cold_before_sharing": cold["products"] * (SUBSTEPS + 1) / SUBSTEPS,
        },
        "third_derivative_products_per_gd_step": {
            "now": third,
            "before_sharing": third * (SUBSTEPS + 1) // SUBSTEPS,
        },
        "gradients_per_gd_step": {"now": SUBSTEPS, "before_sharing": SUBSTEPS + 1},
        "warm_vs_cold_relative_trajectory_distance": {
            "max": float(relative.max()),
            "final": float(relative[-1]),
        },
        "h_sharpness_final": {
            "cold": float(cold["sharpness"][-1]),
            "warm": float(warm["sharpness"][-1]),
        },
        "seconds": {
            "cold": cold["seconds"],
            "warm": warm["seconds"],
            "cold_over_warm": cold["seconds"] / warm["seconds"],
            "first_calls_including_compile": {
                "cold": cold["first_call"],
                "warm": warm["first_call"],
            },
        },
    }


def fc_digits_cost(steps: int, k: int = 5) -> dict:
    digits = dl.problems.fc_digits(width=200, depth=2, num_samples=1000)
    loss, params, data = digits.loss, digits.params, digits.data
    sharpness = dl.lambda_max(loss, params, data)
    h = 2.0 / sharpness  # at the edge from the first step
    gradient = jax.jit(jax.grad(loss))
    jax.block_until_ready(gradient(params, data))
    repeats = 20
    tic = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(gradient(params, data))
    one_gradient = (time.perf_counter() - tic) / repeats
    flow = dl.CentralFlow(loss, h, k=k)
    arms = {}
    for name, warm in (("cold", False), ("warm", True)):
        print(f"fc-digits, {name} ...", flush=True)
        _, quantities, seconds, _ = _timed(flow, params, steps, data, warm)
        arms[name] = {
            "gradients_per_gd_step": seconds / steps / one_gradient,
            "eigensolver_hvps_per_gd_step": _products_per_step(quantities),
            "trace_X_final": float(np.trace(np.asarray(quantities.X)[-1])),
        }
    return {
        "setting": {
            "network": "fc-digits, tanh MLP 200 x 2, MSE, 1000 samples",
            "parameters": int(ravel(params)[0].size),
            "h": h,
            "h_lambda_max_at_start": 2.0,
            "k": k,
            "steps": steps,
            "substeps": SUBSTEPS,
        },
        **{name: arm for name, arm in arms.items()},
        "cold_over_warm": arms["cold"]["gradients_per_gd_step"]
        / arms["warm"]["gradients_per_gd_step"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--digits-steps", type=int, default=20)
    options = parser.parse_args()
    report = {
        "authors_example": authors_example(options.steps),
        "fc_digits": fc_digits_cost(options.digits_steps),
        "load_average_at_end": os.getloadavg()[0],
        "machine": machine_info(),
    }
    a, d = report["authors_example"], report["fc_digits"]
    hvps, third = a["eigensolver_hvps_per_gd_step"], a["third_derivative_products_per_gd_step"]
    rows = [
        [
            "eigensolver HVPs per GD step (cold / warm)",
            f"{fmt(hvps['cold'])} / {fmt(hvps['warm'])}",
        ],
        [
            "eigensolver HVPs per GD step before sharing the saved points",
            fmt(hvps["cold_before_sharing"]),
        ],
        [
            "third-derivative products per GD step (now / before sharing)",
            f"{third['now']} / {third['before_sharing']}",
        ],
        [
            "warm vs cold trajectory, relative distance (max / final)",
            f"{fmt(a['warm_vs_cold_relative_trajectory_distance']['max'])} / "
            f"{fmt(a['warm_vs_cold_relative_trajectory_distance']['final'])}",
        ],
        [
            "h * sharpness at the end (cold / warm)",
            f"{fmt(a['h_sharpness_final']['cold'], 6)} / {fmt(a['h_sharpness_final']['warm'], 6)}",
        ],
        ["wall clock, cold / warm (same run)", fmt(a["seconds"]["cold_over_warm"])],
    ]
    digits_rows = [
        [
            "seconds per GD step in gradient evaluations (cold / warm)",
            f"{fmt(d['cold']['gradients_per_gd_step'])} / "
            f"{fmt(d['warm']['gradients_per_gd_step'])}",
        ],
        [
            "eigensolver HVPs per GD step (cold / warm)",
            f"{fmt(d['cold']['eigensolver_hvps_per_gd_step'])} / "
            f"{fmt(d['warm']['eigensolver_hvps_per_gd_step'])}",
        ],
        ["wall clock, cold / warm (same run)", fmt(d["cold_over_warm"])],
    ]
    text = (
        "# Central flow cost: cold and warm-started eigensolves\n\n"
        f"Command: `python -m benchmarks.central_flow_cost --steps {options.steps} "
        f"--digits-steps {options.digits_steps}`; load average at the end "
        f"{report['load_average_at_end']:.1f} on {os.cpu_count()} CPUs (ratios within one "
        "run; wall-clock ratios are noisy under load).\n\n"
        f"## The authors' example ({a['setting']['parameters']} parameters, h = 0.1, k = 5, "
        f"{options.steps} steps, 4 substeps)\n\n"
        f"Cold: Lanczos from a fixed random start to relative residual {EIGEN_TOL:g} at every "
        f"substep. Warm: from the extrapolated top k + {GUARDS} Ritz vectors of the substeps "
        f"before, to relative residual {WARM_TOL:g}, cold fallback. Both save the quantities "
        "of the substep that starts each step (before: every saved point was re-solved).\n\n"
        + markdown_table(["quantity", "value"], rows)
        + f"\n\n## fc-digits ({d['setting']['parameters']} parameters, h = 2 / lambda_max(w0), "
        f"k = 5, {options.digits_steps} steps)\n\n"
        + markdown_table(["quantity", "value"], digits_rows)
        + "\n"
    )
    os.makedirs(RESULTS_DIR, exist_ok=True)
    write_json_atomic(report, os.path.join(RESULTS_DIR, "central_flow_cost.json"))
    write_text_atomic(text, os.path.join(RESULTS_DIR, "central_flow_cost.md"))
    print(text)


if __name__ == "__main__":
    main()
