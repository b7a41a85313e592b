"""Cost of one `ModifiedFlow` field evaluation against its order, on MLPs of a few sizes.

Reports, per network and order p = 1..8, the wall time of one jitted field
evaluation in gradient-evaluation units (one `jax.grad` of the loss, jitted,
same data) and as a ratio to the hand-written `IGRFlow` (order 1). All ratios
come from one run on one machine. Writes
`benchmarks/results/modified_flow_cost.json` and `.md`.

Run: `python benchmarks/modified_flow_cost.py [--orders 8] [--repeats 20]`.
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax

import driftlab as dl


RESULTS = pathlib.Path(__file__).parent / "results"


def _time(fn, *args, repeats):
    """Median wall time of `fn(*args)` over `repeats` runs, after one compiling call."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_time = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], compile_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[8, 32, 128])
    options = parser.parse_args()
    rows = []
    for hidden in options.hidden:
        problem = dl.problems.mlp_digits(hidden=hidden, num_samples=256)
        size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(problem.params))
        h = 0.1
        grad = eqx.filter_jit(jax.grad(problem.loss))
        grad_time, _ = _time(grad, problem.params, problem.data, repeats=options.repeats)
        field = eqx.filter_jit(lambda flow, y, args: flow(0.0, y, args))
        igr_time, _ = _time(
            field,
            dl.IGRFlow(problem.loss, h),
            problem.params,
            problem.data,
            repeats=options.repeats,
        )
        step = dl.GradientDescent(problem.loss)
        for order in range(1, options.orders + 1):
            flow = dl.ModifiedFlow(step, h, order)
            seconds, compile_seconds = _time(
                field, flow, problem.params, problem.data, repeats=options.repeats
            )
            row = {
                "hidden": hidden,
                "num_params": size,
                "order": order,
                "seconds": seconds,
                "gradient_evaluations": seconds / grad_time,
                "ratio_to_igr": seconds / igr_time,
                "igr_gradient_evaluations": igr_time / grad_time,
                "compile_seconds": compile_seconds,
            }
            rows.append(row)
            print(
                f"[{len(rows)}/{len(options.hidden) * options.orders}] {size} params, p={order}: "
                f"{row['gradient_evaluations']:.1f} grads, {row['ratio_to_igr']:.2f}x IGR, "
                f"compiled in {compile_seconds:.1f}s",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "modified_flow_cost.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# ModifiedFlow: cost of one field evaluation (gradient descent, tanh MLP on digits)",
        "",
        "Gradient-evaluation units: wall time / one jitted `jax.grad` of the loss, same run.",
        "",
        "| params | order p | grads | x IGR | IGR (grads) | compile (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_params']} | {r['order']} | {r['gradient_evaluations']:.1f} | "
            f"{r['ratio_to_igr']:.2f} | {r['igr_gradient_evaluations']:.1f} | "
            f"{r['compile_seconds']:.1f} |"
        )
    (RESULTS / "modified_flow_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
