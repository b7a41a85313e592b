"""Scale, measured: driftlab's main operations on fc networks of 1e4, 1e5 and 1e6 parameters.

For each size (a fresh process each, so peak memory is the size's own): the time of
one jitted gradient, and in units of it the field evaluation of `ModifiedFlow` of
order 1 and 2, one `local_error` point (GD against IGR), and `lambda_max` (the
public spectra API; the number of Hessian-vector products it costs is its time
over one HVP's). Ratios are measured in one run, best of several repeats.

    python -m benchmarks.scale [--sizes 1e4 1e5 1e6]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree

import driftlab as dl
from benchmarks._common import command_line, fmt, markdown_table, RESULTS_DIR, write_text_atomic
from benchmarks.performance import _status_mb
from driftlab._io import machine_info, write_json_atomic
from driftlab.problems import fc_num_params, fc_synthetic


INPUT_DIM, NUM_OUTPUTS, DEPTH, NUM_SAMPLES = 64, 10, 2, 256
#: ModifiedFlow of order 2 should cost at most this many gradients per field at 1e6.
ORDER_2_GOAL = 8.0
#: A cost grows "quadratically" if its fitted log-log slope against n exceeds this.
QUADRATIC_SLOPE = 1.5


def width_for(num_params: float) -> int:
    """The width whose fc network (depth 2, 64 inputs, 10 outputs) is closest in size."""
    widths = np.arange(1, 4000)
    sizes = np.array([fc_num_params(int(w), DEPTH, INPUT_DIM, NUM_OUTPUTS) for w in widths])
    return int(widths[np.argmin(np.abs(sizes - num_params))])


def _block(tree):
    return jtu.tree_map(lambda x: x.block_until_ready(), tree)


def best_times(calls: dict, repeats: int) -> dict:
    """The fastest of `repeats` timings of each call, the calls interleaved round by round
    so that a shared machine's load shifts them alike."""
    for call in calls.values():
        _block(call())
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            _block(call())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(target: float, repeats: int) -> dict:
    """Every measurement at one size, in this process."""
    width = width_for(target)
    problem = fc_synthetic(
        width=width,
        depth=DEPTH,
        input_dim=INPUT_DIM,
        num_outputs=NUM_OUTPUTS,
        num_samples=NUM_SAMPLES,
    )
    params, data = problem.params, problem.data
    num_params = int(ravel_pytree(params)[0].size)
    step = dl.GradientDescent(problem.loss)
    baseline = _status_mb("VmRSS")

    gradient = eqx.filter_jit(jax.grad(problem.loss))
    flat, unravel = ravel_pytree(params)
    hvp = eqx.filter_jit(
        lambda x, v, d: jax.jvp(
            lambda z: ravel_pytree(jax.grad(problem.loss)(unravel(z), d))[0], (x,), (v,)
        )[1]
    )
    direction = jax.random.normal(jax.random.key(1), flat.shape)
    fields = {p: eqx.filter_jit(dl.ModifiedFlow(step, 0.01, order=p)) for p in (1, 2)}
    times = best_times(
        {
            "gradient": lambda: gradient(params, data),
            "hvp": lambda: hvp(flat, direction, data),
            **{p: (lambda f=f: f(0.0, params, data)) for p, f in fields.items()},
        },
        repeats,
    )
    t_gradient, t_hvp, t_fields = times["gradient"], times["hvp"], times

    start = time.perf_counter()
    sharpness = dl.lambda_max(problem.loss, params, data)
    t_lambda_cold = time.perf_counter() - start
    start = time.perf_counter()
    dl.lambda_max(problem.loss, params, data)
    t_lambda = time.perf_counter() - start

    h = 0.5 / sharpness
    flow = dl.IGRFlow(problem.loss, h)
    error = dl.local_error(step, flow, params, h, data)
    start = time.perf_counter()
    dl.local_error(step, flow, params, h, data)
    t_local = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    return {
        "target": target,
        "width": width,
        "num_params": num_params,
        "gradient_seconds": t_gradient,
        "hvp_in_gradients": t_hvp / t_gradient,
        "modified_1_in_gradients": t_fields[1] / t_gradient,
        "modified_2_in_gradients": t_fields[2] / t_gradient,
        "local_error_in_gradients": t_local / t_gradient,
        "local_error": {"h": h, "error": error.error, "floor": error.floor},
        "lambda_max": sharpness,
        "lambda_max_in_hvps": t_lambda / t_hvp,
        "lambda_max_cold_seconds": t_lambda_cold,
        "rss_after_setup_mb": baseline,
        "peak_rss_mb": peak,
    }


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def summarise(rows) -> dict:
    n = [r["num_params"] for r in rows]
    slopes = {
        key: _slope(
            n, [r[key] * (r["gradient_seconds"] if key != "gradient_seconds" else 1) for r in rows]
        )
        for key in [
            "gradient_seconds",
            "modified_1_in_gradients",
            "modified_2_in_gradients",
            "local_error_in_gradients",
        ]
    }
    slopes["peak_rss_mb"] = _slope(
        n, [r["peak_rss_mb"] - r["rss_after_setup_mb"] + 1 for r in rows]
    )
    largest = max(rows, key=lambda r: r["num_params"])
    return {
        "time_slopes_against_n": slopes,
        "order_2_at_largest": largest["modified_2_in_gradients"],
        "order_2_goal_met": largest["modified_2_in_gradients"] <= ORDER_2_GOAL,
        "nothing_quadratic": all(s <= QUADRATIC_SLOPE for s in slopes.values()),
    }


def _met(flag: bool) -> str:
    return "met" if flag else "not met"


def markdown(result) -> str:
    headers = [
        "parameters",
        "width",
        "gradient (ms)",
        "HVP / gradient",
        "ModifiedFlow p=1 / gradient",
        "ModifiedFlow p=2 / gradient",
        "local_error (IGR) / gradient",
        "lambda_max / HVP",
        "peak RSS (MB)",
    ]
    rows = [
        [
            str(r["num_params"]),
            str(r["width"]),
            r["gradient_seconds"] * 1e3,
            r["hvp_in_gradients"],
            r["modified_1_in_gradients"],
            r["modified_2_in_gradients"],
            r["local_error_in_gradients"],
            r["lambda_max_in_hvps"],
            r["peak_rss_mb"],
        ]
        for r in result["rows"]
    ]
    summary = result["summary"]
    slopes = ", ".join(f"{k}: {v:.2f}" for k, v in summary["time_slopes_against_n"].items())
    return "\n".join(
        [
            "# Scale",
            "",
            f"Command: `{result['command']}`; load average at start {fmt(result['load_average'])}"
            " (ratios are within one process, so load shifts them less than absolute times).",
            "",
            markdown_table(headers, rows),
            "",
            f"- ModifiedFlow order 2 at the largest size: "
            f"{summary['order_2_at_largest']:.2f} gradients per field evaluation "
            f"(goal <= {ORDER_2_GOAL:g}): **{_met(summary['order_2_goal_met'])}**.",
            f"- Log-log slopes of time (and of peak-memory growth) against the parameter count: "
            f"{slopes}; nothing quadratic (all <= {QUADRATIC_SLOPE}): "
            f"**{_met(summary['nothing_quadratic'])}**.",
            f"- `lambda_max` is `{result['lambda_max_implementation']}`.",
            "",
        ]
    )


def run(sizes, repeats, output, argv=()) -> dict:
    rows = []
    load = os.getloadavg()[0]
    for target in sizes:
        start = time.perf_counter()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.scale",
                "--one",
                str(target),
                "--repeats",
                str(repeats),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(
            f"{target:g} parameters done in {time.perf_counter() - start:.0f}s: "
            f"order 2 = {rows[-1]['modified_2_in_gradients']:.2f} gradients",
            file=sys.stderr,
            flush=True,
        )
    import driftlab.analysis._spectra as spectra

    uses_scipy = "scipy" in open(spectra.__file__).read()
    result = {
        "command": command_line("benchmarks.scale", argv),
        "machine": machine_info(),
        "load_average": load,
        "rows": rows,
        "summary": summarise(rows),
        "lambda_max_implementation": (
            "scipy eigsh (ARPACK, host loop over jitted HVPs)"
            if uses_scipy
            else "device-resident Lanczos"
        ),
    }
    write_json_atomic(result, os.path.join(output, "scale.json"))
    write_text_atomic(markdown(result), os.path.join(output, "scale.md"))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default=RESULTS_DIR)
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.one is not None:
        import warnings

        warnings.simplefilter("ignore")
        print(json.dumps(measure(args.one, args.repeats)))
        return
    result = run(args.sizes, args.repeats, args.output, argv)
    print(markdown(result))


if __name__ == "__main__":
    main()
