"""Scale, measured: driftlab's main operations on fc networks of 1e4, 1e5 and 1e6 parameters.

For each size (a fresh process each, so memory peaks are the size's own): the time of
one jitted gradient, and in units of it a Hessian-vector product, the field
evaluation of `ModifiedFlow` of order 1 and 2, one `local_error` point (GD against
IGR) and `lambda_max` by the device Lanczos (`hessian_eigenpairs(method="lanczos")`)
to a stated relative residual, with the number of Hessian-vector products it spent,
its error against a tightly converged run, and the peak memory of each phase.

Times are CPU seconds of the measuring process (`time.process_time`) with XLA held to
one thread, the least of several interleaved repeats, compilation excluded. On a
machine shared with other jobs, wall-clock time is not a measure of cost: a long call
is time-sliced with the other jobs while a short one often runs uninterrupted, so
wall-clock ratios grow with the load and the call's length (measured here at 1e5
parameters under a load of 10 on 2 cores: `ModifiedFlow` order 2 took 3x as long,
in wall-clock gradients, as in CPU gradients), and XLA's worker threads wait on each
other when one of them is descheduled. CPU time of a single thread does not see the
other jobs, except through shared caches; it does count XLA's helper threads
(measured: a Lanczos call's CPU time was twice its wall time with these flags), and
varied by up to 2x between runs at a load of 5 to 15. Matrix-product FLOPs of each
jaxpr (`driftlab._cost.jaxpr_cost`) are reported beside the times: they are exact.

    python -m benchmarks.scale [--sizes 1e4 1e5 1e6] [--repeats 10]
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

import driftlab as dl
from benchmarks._common import command_line, fmt, markdown_table, RESULTS_DIR, write_text_atomic
from benchmarks.performance import _status_mb
from driftlab._cost import compiled_flops, jaxpr_cost
from driftlab._io import machine_info, write_json_atomic
from driftlab._tree import grad, ravel
from driftlab.problems import fc_num_params, fc_synthetic


INPUT_DIM, NUM_OUTPUTS, DEPTH, NUM_SAMPLES = 64, 10, 2, 256
#: ModifiedFlow of order 2 should cost at most this many gradients per field at 1e6.
ORDER_2_GOAL = 8.0
#: Lanczos lambda_max should reach this relative accuracy ...
LANCZOS_ACCURACY = 1e-6
#: ... in at most this many Hessian-vector products.
LANCZOS_GOAL = 60
#: The reference lambda_max: Lanczos to this relative residual (eigenvalue error ~ its square).
REFERENCE_TOL = 1e-10
REFERENCE_ITERATIONS = 200
#: A cost grows "quadratically" if its fitted log-log slope against n exceeds this.
QUADRATIC_SLOPE = 1.5
#: Repeats of the long calls (Lanczos, local_error), each timed once before as a warm-up.
TIMED_REPEATS = 3
#: XLA on one thread: the CPU time of the process is then the work done.
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def width_for(num_params: float) -> int:
    """The width whose fc network (depth 2, 64 inputs, 10 outputs) is closest in size."""
    widths = np.arange(1, 4000)
    sizes = np.array([fc_num_params(int(w), DEPTH, INPUT_DIM, NUM_OUTPUTS) for w in widths])
    return int(widths[np.argmin(np.abs(sizes - num_params))])


class PeakMemory:
    """The peak resident memory of one phase, above the resident memory when it began.

    Resets the kernel's high-water mark (`/proc/self/clear_refs`, Linux >= 4.0) on entry.
    """

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        self.start = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = _status_mb("VmHWM")
        self.growth = self.peak - self.start


def _block(tree):
    return jtu.tree_map(jax.block_until_ready, tree)


def cpu_time(call) -> float:
    start = time.process_time()
    _block(call())
    return time.process_time() - start


def best_times(calls: dict, repeats: int) -> dict:
    """The least CPU time of `repeats` runs of each call (after one warm-up run), the calls
    interleaved round by round so that a shared machine's load shifts them alike."""
    for call in calls.values():
        _block(call())
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            best[name] = min(best[name], cpu_time(call))
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
    loss, params, data = problem.loss, problem.params, problem.data
    flat, unravel = ravel(params)
    num_params = int(flat.size)
    step = dl.GradientDescent(loss)
    memory = {"after_setup_mb": _status_mb("VmRSS")}

    # The gradient and the HVP as the Lanczos run computes them (on the ravelled vector).
    gradient = eqx.filter_jit(lambda p, d: grad(loss, p, d))
    grad_flat = lambda x, d: ravel(grad(loss, unravel(x), d))[0]
    hvp = eqx.filter_jit(lambda x, v, d: jax.jvp(lambda z: grad_flat(z, d), (x,), (v,))[1])
    direction = jax.random.normal(jax.random.key(1), flat.shape)
    fields = {p: eqx.filter_jit(dl.ModifiedFlow(step, 0.01, order=p)) for p in (1, 2)}
    with PeakMemory() as fields_memory:
        times = best_times(
            {
                "gradient": lambda: gradient(params, data),
                "hvp": lambda: hvp(flat, direction, data),
                **{f"modified_{p}": (lambda f=f: f(0.0, params, data)) for p, f in fields.items()},
            },
            repeats,
        )
    memory["fields_growth_mb"] = fields_memory.growth
    t_gradient = times["gradient"]
    # Deterministic counts of the same calls: matrix-product FLOPs and the largest array of
    # each jaxpr, and every operation as XLA compiles it (after common-subexpression
    # elimination).
    counted = {
        "gradient": (lambda p, d: grad(loss, p, d), params, data),
        "hvp": (
            lambda x, v, d: jax.jvp(lambda z: grad_flat(z, d), (x,), (v,))[1],
            flat,
            direction,
            data,
        ),
        **{
            f"modified_{p}": (lambda q, d, f=f: f(0.0, q, d), params, data)
            for p, f in fields.items()
        },
    }
    costs = {name: jaxpr_cost(*call) for name, call in counted.items()}
    compiled = {name: compiled_flops(*call) for name, call in counted.items()}
    flops = {name: cost[0] / costs["gradient"][0] for name, cost in costs.items()}

    with PeakMemory() as lanczos_memory:
        spectrum = dl.hessian_eigenpairs(loss, params, data, method="lanczos", tol=LANCZOS_ACCURACY)
        t_lanczos = best_times(
            {
                "lanczos": lambda: (
                    dl.hessian_eigenpairs(
                        loss, params, data, method="lanczos", tol=LANCZOS_ACCURACY
                    ).eigenvalues
                )
            },
            TIMED_REPEATS,
        )["lanczos"]
    memory["lanczos_growth_mb"] = lanczos_memory.growth
    reference = dl.hessian_eigenpairs(
        loss,
        params,
        data,
        method="lanczos",
        tol=REFERENCE_TOL,
        max_iterations=REFERENCE_ITERATIONS,
    )
    sharpness, exact = float(spectrum.eigenvalues[-1]), float(reference.eigenvalues[-1])

    h = 0.5 / exact
    flow = dl.IGRFlow(loss, h)
    with PeakMemory() as local_memory:
        error = dl.local_error(step, flow, params, h, data)
        t_local = best_times(
            {"local_error": lambda: dl.local_error(step, flow, params, h, data).error},
            TIMED_REPEATS,
        )["local_error"]
    memory["local_error_growth_mb"] = local_memory.growth
    memory["peak_rss_mb"] = max(m.peak for m in (fields_memory, lanczos_memory, local_memory))
    return {
        "target": target,
        "width": width,
        "num_params": num_params,
        "gradient_seconds": t_gradient,
        "hvp_in_gradients": times["hvp"] / t_gradient,
        "modified_1_in_gradients": times["modified_1"] / t_gradient,
        "modified_2_in_gradients": times["modified_2"] / t_gradient,
        "local_error_in_gradients": t_local / t_gradient,
        "flops_in_gradients": {k: v for k, v in flops.items() if k != "gradient"},
        "gradient_flops": costs["gradient"][0],
        "compiled_flops_in_gradients": {
            k: v / compiled["gradient"] for k, v in compiled.items() if k != "gradient"
        },
        "largest_array_over_n": max(cost[1] for cost in costs.values()) / num_params,
        "local_error": {"h": h, "error": float(error.error), "floor": float(error.floor)},
        "lambda_max": {
            "value": sharpness,
            "tol": LANCZOS_ACCURACY,
            "hvps": spectrum.num_products,
            "relative_residual": float(spectrum.residuals[-1]) / abs(sharpness),
            "relative_error": abs(sharpness - exact) / abs(exact),
            "in_gradients": t_lanczos / t_gradient,
            "in_hvps": t_lanczos / times["hvp"],
            "reference": exact,
            "reference_hvps": reference.num_products,
            "reference_relative_residual": float(reference.residuals[-1]) / abs(exact),
        },
        "memory": memory,
    }


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


#: The costs whose growth with n is fitted: seconds of each, from the ratios.
_COSTS = {
    "gradient": lambda r: r["gradient_seconds"],
    "hvp": lambda r: r["hvp_in_gradients"] * r["gradient_seconds"],
    "modified_1": lambda r: r["modified_1_in_gradients"] * r["gradient_seconds"],
    "modified_2": lambda r: r["modified_2_in_gradients"] * r["gradient_seconds"],
    "local_error": lambda r: r["local_error_in_gradients"] * r["gradient_seconds"],
    "lambda_max": lambda r: r["lambda_max"]["in_gradients"] * r["gradient_seconds"],
}


def summarise(rows) -> dict:
    rows = sorted(rows, key=lambda r: r["num_params"])
    n = [r["num_params"] for r in rows]
    largest = rows[-1]
    lanczos_met = all(
        r["lambda_max"]["hvps"] <= LANCZOS_GOAL
        and r["lambda_max"]["relative_error"] <= LANCZOS_ACCURACY
        for r in rows
    )
    summary = {
        "order_2_at_largest": largest["modified_2_in_gradients"],
        "order_2_goal_met": largest["num_params"] >= 5e5
        and largest["modified_2_in_gradients"] <= ORDER_2_GOAL,
        "order_2_compiled_flops_at_largest": largest["compiled_flops_in_gradients"]["modified_2"],
        "order_2_goal_met_in_compiled_flops": largest["num_params"] >= 5e5
        and largest["compiled_flops_in_gradients"]["modified_2"] <= ORDER_2_GOAL,
        "lanczos_hvps": [r["lambda_max"]["hvps"] for r in rows],
        "lanczos_goal_met": lanczos_met,
    }
    if len(rows) > 1:
        slopes = {key: _slope(n, [cost(r) for r in rows]) for key, cost in _COSTS.items()}
        # Memory that grows with n: the phases' growth (+1 MB against empty phases).
        slopes["peak_memory"] = _slope(
            n,
            [1 + max(v for k, v in r["memory"].items() if k.endswith("growth_mb")) for r in rows],
        )
        summary["slopes_against_n"] = slopes
        summary["nothing_quadratic"] = all(s <= QUADRATIC_SLOPE for s in slopes.values())
    return summary


def _met(flag: bool) -> str:
    return "met" if flag else "not met"


def markdown(result) -> str:
    headers = [
        "parameters",
        "width",
        "gradient (ms CPU)",
        "HVP / gradient",
        "ModifiedFlow p=1 / gradient",
        "ModifiedFlow p=2 / gradient",
        "FLOPs / gradient: HVP, p=1, p=2",
        "XLA FLOPs / gradient: HVP, p=1, p=2",
        "largest array / n",
        "local_error (IGR) / gradient",
        "lambda_max HVPs (rel. error)",
        "lambda_max / gradient",
        "peak RSS (MB)",
        "largest phase growth (MB)",
    ]
    rows = [
        [
            str(r["num_params"]),
            str(r["width"]),
            r["gradient_seconds"] * 1e3,
            r["hvp_in_gradients"],
            r["modified_1_in_gradients"],
            r["modified_2_in_gradients"],
            ", ".join(
                f"{r['flops_in_gradients'][k]:.2f}" for k in ("hvp", "modified_1", "modified_2")
            ),
            ", ".join(
                f"{r['compiled_flops_in_gradients'][k]:.2f}"
                for k in ("hvp", "modified_1", "modified_2")
            ),
            r["largest_array_over_n"],
            r["local_error_in_gradients"],
            f"{r['lambda_max']['hvps']} ({r['lambda_max']['relative_error']:.1e})",
            r["lambda_max"]["in_gradients"],
            r["memory"]["peak_rss_mb"],
            max(v for k, v in r["memory"].items() if k.endswith("growth_mb")),
        ]
        for r in result["rows"]
    ]
    summary = result["summary"]
    lines = [
        "# Scale",
        "",
        f"Command: `{result['command']}`; load average at start {fmt(result['load_average'])}"
        " on "
        f"{result['machine']['cpu_count']} cores. Times are CPU time of one XLA thread, least of "
        "the repeats (see the script's docstring for why not wall-clock); FLOPs are the "
        "matrix products of each jaxpr (deterministic, no common-subexpression elimination); "
        "XLA FLOPs are every operation of the program as XLA compiled it (after its "
        "common-subexpression elimination).",
        "",
        markdown_table(headers, rows),
        "",
        f"- ModifiedFlow order 2 at the largest size (goal <= {ORDER_2_GOAL:g} gradients per "
        f"field evaluation at 1e6): {summary['order_2_at_largest']:.2f} gradients in CPU "
        f"time, **{_met(summary['order_2_goal_met'])}**; "
        f"{summary['order_2_compiled_flops_at_largest']:.2f} in XLA's FLOPs, "
        f"**{_met(summary['order_2_goal_met_in_compiled_flops'])}**.",
        f'- `lambda_max` by device Lanczos (`hessian_eigenpairs(method="lanczos", '
        f"tol={LANCZOS_ACCURACY:g})`: stops at relative residual {LANCZOS_ACCURACY:g}, which "
        "bounds the relative eigenvalue error; the convergence test runs every 4 products) "
        f"spent {summary['lanczos_hvps']} Hessian-vector products; error against a run to "
        f"relative residual {REFERENCE_TOL:g}: see the table (goal <= {LANCZOS_GOAL} products "
        f"for {LANCZOS_ACCURACY:g}): **{_met(summary['lanczos_goal_met'])}**.",
    ]
    if "slopes_against_n" in summary:
        slopes = ", ".join(f"{k}: {v:.2f}" for k, v in summary["slopes_against_n"].items())
        lines.append(
            f"- Log-log slopes of CPU time (and of the largest phase's memory growth) against "
            f"the parameter count: {slopes}; nothing quadratic (all <= {QUADRATIC_SLOPE}): "
            f"**{_met(summary['nothing_quadratic'])}**."
        )
    return "\n".join([*lines, ""])


def run(sizes, repeats, output, argv=()) -> dict:
    rows = []
    load = os.getloadavg()[0]
    environment = {**os.environ, "XLA_FLAGS": SINGLE_THREAD_FLAGS}
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
            env=environment,
        )
        rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(
            f"{target:g} parameters done in {time.perf_counter() - start:.0f}s: "
            f"order 2 = {rows[-1]['modified_2_in_gradients']:.2f} gradients, "
            f"lambda_max in {rows[-1]['lambda_max']['hvps']} HVPs",
            file=sys.stderr,
            flush=True,
        )
    result = {
        "command": command_line("benchmarks.scale", argv),
        "machine": machine_info(),
        "load_average": load,
        "timing": "CPU time (time.process_time) with XLA_FLAGS=" + SINGLE_THREAD_FLAGS,
        "rows": rows,
        "summary": summarise(rows),
    }
    write_json_atomic(result, os.path.join(output, "scale.json"))
    write_text_atomic(markdown(result), os.path.join(output, "scale.md"))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--repeats", type=int, default=10)
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
