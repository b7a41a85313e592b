"""Time the matrix-free principal flow on a ~100 000-parameter MLP on digits.

Writes `benchmarks/results/principal_flow_timing.json`. Run:
`python -m benchmarks.principal_flow_timing [--hidden 1340 --k 10 --num-iterations 20]`.
"""

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic

from ._common import RESULTS_DIR


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1340)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-iterations", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    options = parser.parse_args()
    problem = dl.problems.mlp_digits(hidden=options.hidden)
    loss, params, data = problem.loss, problem.params, problem.data
    size = sum(leaf.size for leaf in jtu.tree_leaves(params))
    timings = {}
    start = time.perf_counter()
    lam = dl.lambda_max(loss, params, data)
    timings["lambda_max_seconds"] = time.perf_counter() - start
    h = 0.5 / lam
    flow = dl.PrincipalFlow(
        loss, h, method="lanczos", k=options.k, num_iterations=options.num_iterations
    )
    field = eqx.filter_jit(flow)
    start = time.perf_counter()
    jax.block_until_ready(field(0.0, params, data))
    timings["first_field_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(field(0.0, params, data))
    timings["field_seconds"] = (time.perf_counter() - start) / 3
    grad = eqx.filter_jit(jax.grad(loss))
    jax.block_until_ready(grad(params, data))
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(grad(params, data))
    timings["gradient_seconds"] = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    t_end = options.steps * h
    flow_end = dl.solve(flow, params, t_end, args=data, rtol=1e-8, atol=1e-8)
    timings["solve_seconds"] = time.perf_counter() - start
    gd_end = dl.integrators.advance(dl.GradientDescent(loss), params, h, options.steps, data)
    gf_end = dl.solve(dl.GradientFlow(loss), params, t_end, args=data, rtol=1e-8, atol=1e-8)
    rel = lambda a, b: float(
        dl._tree.tree_norm(dl._tree.tree_sub(a, b))
        / dl._tree.tree_norm(dl._tree.tree_sub(b, params))
    )
    result = {
        "num_params": int(size),
        "lambda_max": lam,
        "h": h,
        "h_lambda_max": h * lam,
        "k": options.k,
        "num_iterations": options.num_iterations,
        "steps": options.steps,
        "error_vs_gd_relative_to_displacement": {
            "principal_lanczos": rel(flow_end, gd_end),
            "gradient_flow": rel(gf_end, gd_end),
        },
        "seconds": timings,
        "field_cost_in_gradients": timings["field_seconds"] / timings["gradient_seconds"],
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    write_json_atomic(result, os.path.join(RESULTS_DIR, "principal_flow_timing.json"))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
