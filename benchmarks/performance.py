r"""Performance of driftlab's building blocks, as ratios measured within one run.

    python -m benchmarks.performance            # the full set, ~5-10 minutes on 2 cores
    python -m benchmarks.performance --quick    # smaller sizes, fewer repeats

Absolute times depend on the machine and on whatever else runs on it; ratios of
two timings taken moments apart in the same process depend much less. Each
timing is the best of `repeats` runs after a warm-up call (so it excludes
compilation, which is reported separately).

1. **Solver**: `driftlab.solve` (diffrax `Dopri8`, jitted) against
   `scipy.integrate.solve_ivp(method="DOP853")` on the same IGR field of the
   MLP on digits, at the same achieved accuracy: both are measured against a
   reference solve at `REFERENCE_TOLERANCE`, and scipy's tolerance is tuned until
   its error matches driftlab's (the error ratio is reported). Target: driftlab
   5x faster after compilation.
2. **Order measurement**: a full `driftlab.order_of_accuracy` (GD against IGR on the
   MLP, local and global, 6 step sizes), as a multiple of one jitted gradient
   evaluation, cold (with compilation) and warm.
3. **Principal flow**: one field evaluation of `PrincipalFlow` dense against
   matrix-free Lanczos (`k = 10` Ritz pairs, 20 iterations) as the number of
   parameters grows from 1e2 to 1e5 (MLPs of growing width), and the accuracy of
   the top-k approximation: the Lanczos field and Ritz values against the dense
   ones where dense is affordable, else against a 60-iteration Lanczos field and
   ARPACK's (`driftlab.hessian_eigenpairs`) eigenvalues.
4. **Peak memory** of the largest size of each, each in a fresh subprocess:
   the growth of `resource.getrusage(...).ru_maxrss` over the process's size after
   set-up, and `tracemalloc`'s peak of Python-side allocations (XLA buffers are
   outside tracemalloc's view; the RSS figure includes them).

Writes `performance.json` and `performance.md` to `--output` (default `benchmarks/results/`).
`ModifiedFlow`'s cost against IGR and its growth with the order are measured by
`benchmarks/modified_flow_cost.py`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import equinox as eqx
import jax
import numpy as np
import scipy.integrate
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic
from driftlab.flows._principal import lanczos

from ._common import command_line, fmt, markdown_table, Progress, RESULTS_DIR, write_text_atomic


#: Tolerance of the reference solve the achieved errors are measured against.
REFERENCE_TOLERANCE = 1e-13
#: driftlab's solver tolerance in the comparison; scipy's is tuned to match its error.
SOLVER_TOLERANCE = 1e-8
#: Target speed-up of `driftlab.solve` over scipy's DOP853 at equal accuracy.
SOLVER_TARGET = 5.0
#: Hidden widths of the MLP (75 * width + 10 parameters: 85 to ~1e5).
WIDTHS = (1, 4, 13, 40, 133, 400, 1333)
#: The dense principal flow is measured up to this many parameters (O(n^3) per evaluation).
DENSE_MAX_PARAMETERS = 1000
#: Ritz pairs and Lanczos iterations of the matrix-free principal flow.
PRINCIPAL_K = 10
PRINCIPAL_ITERATIONS = 20
REFERENCE_ITERATIONS = 60


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _block(tree):
    return jax.block_until_ready(tree)


def _mlp(width: int = 16):
    problem = dl.problems.mlp_digits(hidden=width)
    return problem, dl.lambda_max(problem.loss, problem.params, problem.data)


# 1. driftlab.solve against scipy's DOP853 ----------------------------------------------------


def _solver_setup():
    problem, curvature = _mlp()
    flow = dl.IGRFlow(problem.loss, 0.1 / curvature)
    flat0, unravel = ravel_pytree(problem.params)
    field = jax.jit(lambda y: ravel_pytree(flow(0.0, unravel(y), problem.data))[0])
    return problem, flow, flat0, field


def _driftlab_solve(problem, flow, t1, tolerance):
    y = dl.solve(flow, problem.params, t1, args=problem.data, rtol=tolerance, atol=tolerance)
    return np.asarray(ravel_pytree(_block(y))[0])


def _scipy_solve(field, flat0, t1, tolerance):
    rhs = lambda t, y: np.asarray(field(y))
    return scipy.integrate.solve_ivp(
        rhs, (0.0, t1), np.asarray(flat0), method="DOP853", rtol=tolerance, atol=tolerance
    )


def solver_comparison(t1: float, repeats: int, progress) -> dict:
    """driftlab.solve vs solve_ivp(DOP853) on the IGR field of the MLP, at equal accuracy."""
    problem, flow, flat0, field = _solver_setup()
    reference = _driftlab_solve(problem, flow, t1, REFERENCE_TOLERANCE)
    scale = np.linalg.norm(reference)
    error = lambda y: float(np.linalg.norm(y - reference) / scale)
    solution, first = timed(lambda: _driftlab_solve(problem, flow, t1, SOLVER_TOLERANCE))
    driftlab_error = error(solution)
    driftlab_time = best_time(lambda: _driftlab_solve(problem, flow, t1, SOLVER_TOLERANCE), repeats)
    progress(
        f"driftlab.solve: error {driftlab_error:.3g}, {driftlab_time:.3f}s ({first:.1f}s cold)"
    )
    # scipy: find the tolerance whose achieved error matches driftlab's, by log-log
    # interpolation of error against tolerance, then one secant refinement.
    _block(field(flat0))
    tried = {}
    for tolerance in (1e-7, 1e-9, 1e-11):
        tried[tolerance] = error(_scipy_solve(field, flat0, t1, tolerance).y[:, -1])
        progress(f"scipy DOP853 at tol {tolerance:.0e}: error {tried[tolerance]:.3g}")
    for _ in range(2):
        tols = np.array(sorted(tried))
        errs = np.array([tried[t] for t in tols])
        slope, intercept = np.polyfit(np.log(tols), np.log(errs), 1)
        tolerance = float(np.exp((np.log(driftlab_error) - intercept) / slope))
        tried[tolerance] = error(_scipy_solve(field, flat0, t1, tolerance).y[:, -1])
        progress(f"scipy DOP853 at tol {tolerance:.3g}: error {tried[tolerance]:.3g}")
    # Use the tried tolerance whose error is closest to driftlab's (in log).
    tolerance = min(tried, key=lambda t: abs(np.log(tried[t] / driftlab_error)))
    scipy_result = _scipy_solve(field, flat0, t1, tolerance)
    scipy_time = best_time(lambda: _scipy_solve(field, flat0, t1, tolerance), repeats)
    progress(f"scipy DOP853 at matched tol {tolerance:.3g}: {scipy_time:.3f}s")
    field_time = best_time(lambda: _block(field(flat0)), 20 * repeats)
    return {
        "problem": f"mlp ({flat0.size} parameters), IGR field at h * lambda_max = 0.1",
        "t1": t1,
        "reference_tolerance": REFERENCE_TOLERANCE,
        "driftlab": {
            "tolerance": SOLVER_TOLERANCE,
            "relative_error": driftlab_error,
            "seconds": driftlab_time,
            "first_call_seconds": first,
            "compile_seconds": first - driftlab_time,
        },
        "scipy": {
            "tolerance": tolerance,
            "relative_error": error(scipy_result.y[:, -1]),
            "seconds": scipy_time,
            "field_evaluations": int(scipy_result.nfev),
            "tolerances_tried": {f"{t:.3g}": e for t, e in sorted(tried.items())},
        },
        "field_evaluation_seconds": field_time,
        "error_ratio": error(scipy_result.y[:, -1]) / driftlab_error,
        "speedup": scipy_time / driftlab_time,
        "target": SOLVER_TARGET,
        "target_met": scipy_time / driftlab_time >= SOLVER_TARGET,
    }


# 2. order_of_accuracy as a multiple of one gradient -------------------------------------------


def order_measurement_cost(repeats: int, progress) -> dict:
    """A full `order_of_accuracy` (GD vs IGR on the MLP) in units of one jitted gradient."""
    import warnings

    problem, curvature = _mlp()
    step = dl.GradientDescent(problem.loss)
    hs = np.geomspace(1 / 256, 1 / 8, 6)
    gradient = jax.jit(jax.grad(problem.loss))
    _block(gradient(problem.params, problem.data))
    gradient_time = best_time(lambda: _block(gradient(problem.params, problem.data)), 50 * repeats)
    out = {"gradient_seconds": gradient_time, "hs": hs, "lambda_max": curvature}
    for kind in ("local", "global"):

        def measure():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dl.RoundoffWarning)
                return dl.order_of_accuracy(
                    step,
                    lambda h: dl.IGRFlow(problem.loss, h),
                    problem.params,
                    hs,
                    kind,
                    problem.data,
                    t_end=1.0 if kind == "global" else None,
                )

        estimate, cold = timed(measure)
        warm = best_time(measure, repeats)
        out[kind] = {
            "slope": estimate.slope,
            "expected": estimate.expected,
            "cold_seconds": cold,
            "warm_seconds": warm,
            "cold_gradients": cold / gradient_time,
            "warm_gradients": warm / gradient_time,
        }
        progress(
            f"order_of_accuracy ({kind}): slope {estimate.slope:.2f}, {warm:.2f}s warm = "
            f"{warm / gradient_time:.3g} gradients ({cold:.1f}s cold)"
        )
    return out


# 3. Principal flow: dense vs Lanczos -----------------------------------------------------------


@eqx.filter_jit
def _field(flow, y, args):
    return ravel_pytree(flow(0.0, y, args))[0]


def _principal_flows(problem, h):
    return {
        "dense": dl.PrincipalFlow(problem.loss, h),
        "lanczos": dl.PrincipalFlow(
            problem.loss, h, method="lanczos", k=PRINCIPAL_K, num_iterations=PRINCIPAL_ITERATIONS
        ),
        "reference": dl.PrincipalFlow(
            problem.loss, h, method="lanczos", k=PRINCIPAL_K, num_iterations=REFERENCE_ITERATIONS
        ),
    }


def _ritz_values(problem, iterations):
    flat, unravel = ravel_pytree(problem.params)
    grad_flat = lambda x: ravel_pytree(jax.grad(problem.loss)(unravel(x), problem.data))[0]
    grad, hvp = jax.linearize(grad_flat, flat)
    values, _ = jax.jit(lambda g: lanczos(hvp, g, iterations))(grad)
    return np.sort(np.asarray(values))[-PRINCIPAL_K:]


def principal_scaling(widths, repeats: int, progress) -> list[dict]:
    """Field-evaluation cost and top-k accuracy of the dense and Lanczos principal flows."""
    rows = []
    for width in widths:
        problem, curvature = _mlp(width)
        n = int(ravel_pytree(problem.params)[0].size)
        h = 0.5 / curvature
        flows = _principal_flows(problem, h)
        row = {"width": width, "parameters": n, "lambda_max": curvature}
        fields = {}
        for name, flow in flows.items():
            if name == "dense" and n > DENSE_MAX_PARAMETERS:
                continue
            value, first = timed(lambda: _block(_field(flow, problem.params, problem.data)))
            fields[name] = np.asarray(value)
            seconds = best_time(lambda: _block(_field(flow, problem.params, problem.data)), repeats)
            row[name] = {"seconds": seconds, "compile_seconds": first - seconds}
        exact = "dense" if "dense" in fields else "reference"
        truth = fields[exact]
        row["lanczos"]["field_relative_error"] = float(
            np.linalg.norm(fields["lanczos"] - truth) / np.linalg.norm(truth)
        )
        row["lanczos"]["field_compared_with"] = exact
        if "dense" in row:
            row["dense_over_lanczos"] = row["dense"]["seconds"] / row["lanczos"]["seconds"]
        method = "dense" if n <= DENSE_MAX_PARAMETERS else "lanczos"
        top = dl.hessian_eigenpairs(
            problem.loss, problem.params, problem.data, k=PRINCIPAL_K, method=method
        ).eigenvalues
        ritz = _ritz_values(problem, PRINCIPAL_ITERATIONS)
        row["lanczos"]["top_k_relative_error"] = float(np.max(np.abs(ritz - top)) / top[-1])
        row["lanczos"]["lambda_max_relative_error"] = float(abs(ritz[-1] - top[-1]) / top[-1])
        row["top_k_reference"] = f"hessian_eigenpairs(method={method!r})"
        progress(
            f"principal flow, {n} parameters: lanczos {row['lanczos']['seconds']:.4f}s"
            + (f", dense {row['dense']['seconds']:.4f}s" if "dense" in row else "")
            + f"; field error {row['lanczos']['field_relative_error']:.2g} vs {exact}, "
            f"top-k error {row['lanczos']['top_k_relative_error']:.2g}"
        )
        rows.append(row)
    return rows


# 4. Peak memory, each in a fresh process -------------------------------------------------------


def _probe_target(name: str):
    """Set-up (not measured) and the measured call of one memory probe."""
    if name == "solve":
        problem, flow, _, _ = _solver_setup()
        return lambda: _driftlab_solve(problem, flow, 5.0, SOLVER_TOLERANCE)
    if name == "scipy":
        _, _, flat0, field = _solver_setup()
        return lambda: _scipy_solve(field, flat0, 5.0, SOLVER_TOLERANCE)
    if name == "order":
        problem, _ = _mlp()
        step = dl.GradientDescent(problem.loss)
        hs = np.geomspace(1 / 256, 1 / 8, 6)
        make_flow = lambda h: dl.IGRFlow(problem.loss, h)
        return lambda: dl.order_of_accuracy(
            step, make_flow, problem.params, hs, "local", problem.data
        )
    method, width = name.split(":")
    problem, curvature = _mlp(int(width))
    flow = _principal_flows(problem, 0.5 / curvature)[method]
    return lambda: _block(_field(flow, problem.params, problem.data))


def probe(name: str) -> dict:
    """Peak memory of one measurement in this (fresh) process; printed as JSON."""
    import warnings

    warnings.simplefilter("ignore")
    target = _probe_target(name)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    target()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "probe": name,
        "rss_after_setup_mb": baseline / 1024,
        "peak_rss_mb": peak / 1024,
        "peak_growth_mb": (peak - baseline) / 1024,
        "tracemalloc_peak_mb": traced_peak / 2**20,
    }


def peak_memory(names, progress) -> list[dict]:
    results = []
    for name in names:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.performance", "--probe", name],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if completed.returncode != 0:
            results.append({"probe": name, "failure": completed.stderr.strip()[-500:]})
            progress(f"memory probe {name}: failed")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(result)
        progress(
            f"memory probe {name}: peak RSS {result['peak_rss_mb']:.0f} MB "
            f"(+{result['peak_growth_mb']:.0f} MB over set-up)"
        )
    return results


# Report ----------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    solver, order = result["solver"], result["order_of_accuracy"]
    d, s = solver["driftlab"], solver["scipy"]
    lines = [
        "# Performance (ratios within one run)",
        "",
        f"Command: `{result['command']}`  ",
        f"Runtime: {result['seconds']:.0f} s on {result['machine']['platform']} "
        f"({result['machine']['cpu_count']} cores shared with other jobs, jax "
        f"{result['machine']['jax']}). Times are best-of-{result['repeats']} after a warm-up.",
        "",
        "## 1. `driftlab.solve` (diffrax Dopri8) vs `scipy.integrate.solve_ivp` (DOP853)",
        "",
        f"{solver['problem']}, t = 0..{solver['t1']:g}; errors relative to a reference "
        f"solve at tolerance {solver['reference_tolerance']:g}.",
        "",
        markdown_table(
            ["solver", "tolerance", "achieved relative error", "seconds", "compile seconds"],
            [
                [
                    "driftlab.solve",
                    d["tolerance"],
                    d["relative_error"],
                    d["seconds"],
                    d["compile_seconds"],
                ],
                ["scipy DOP853", s["tolerance"], s["relative_error"], s["seconds"], "-"],
            ],
        ),
        "",
        f"**Speed-up {solver['speedup']:.1f}x** at an error ratio (scipy / driftlab) of "
        f"{solver['error_ratio']:.2f}; target {solver['target']:g}x: "
        f"**{'met' if solver['target_met'] else 'not met'}**. scipy made "
        f"{s['field_evaluations']} field evaluations of {fmt(solver['field_evaluation_seconds'])}"
        " s each (jitted, called from Python).",
        "",
        "## 2. A full `order_of_accuracy` in units of one jitted gradient",
        "",
        f"GD vs IGR on the MLP, 6 step sizes; one gradient takes "
        f"{fmt(order['gradient_seconds'])} s.",
        "",
        markdown_table(
            ["kind", "slope (expected)", "warm s", "warm / gradient", "cold s", "cold / gradient"],
            [
                [
                    kind,
                    f"{order[kind]['slope']:.2f} ({order[kind]['expected']:g})",
                    order[kind]["warm_seconds"],
                    order[kind]["warm_gradients"],
                    order[kind]["cold_seconds"],
                    order[kind]["cold_gradients"],
                ]
                for kind in ("local", "global")
            ],
        ),
        "",
        "## 3. Principal flow: dense vs matrix-free Lanczos, per field evaluation",
        "",
        f"k = {PRINCIPAL_K} Ritz pairs from {PRINCIPAL_ITERATIONS} Lanczos iterations; "
        f"h * lambda_max = 0.5; dense measured up to {DENSE_MAX_PARAMETERS} parameters.",
        "",
        markdown_table(
            [
                "parameters",
                "dense s",
                "lanczos s",
                "dense / lanczos",
                "field rel. error (vs)",
                "top-k eigenvalue rel. error",
                "lambda_max rel. error",
            ],
            [
                [
                    row["parameters"],
                    row.get("dense", {}).get("seconds"),
                    row["lanczos"]["seconds"],
                    row.get("dense_over_lanczos"),
                    f"{fmt(row['lanczos']['field_relative_error'])} "
                    f"({row['lanczos']['field_compared_with']})",
                    row["lanczos"]["top_k_relative_error"],
                    row["lanczos"]["lambda_max_relative_error"],
                ]
                for row in result["principal"]
            ],
        ),
        "",
        "## 4. Peak memory (fresh process per measurement)",
        "",
        markdown_table(
            ["measurement", "RSS after set-up MB", "peak RSS MB", "growth MB", "tracemalloc MB"],
            [
                [
                    m["probe"],
                    m.get("rss_after_setup_mb"),
                    m.get("peak_rss_mb"),
                    m.get("peak_growth_mb"),
                    m.get("tracemalloc_peak_mb", m.get("failure", "")[:80]),
                ]
                for m in result["memory"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def run(output: str, quick: bool, argv) -> dict:
    start = time.perf_counter()
    progress = Progress()
    repeats = 2 if quick else 3
    widths = WIDTHS[:4] if quick else WIDTHS
    largest_dense = max(w for w in widths if 75 * w + 10 <= DENSE_MAX_PARAMETERS)
    result = {
        "command": command_line("benchmarks.performance", argv),
        "machine": machine_info(),
        "repeats": repeats,
        "solver": solver_comparison(5.0, repeats, progress),
        "order_of_accuracy": order_measurement_cost(repeats, progress),
        "principal": principal_scaling(widths, repeats, progress),
        "memory": peak_memory(
            ["solve", "scipy", "order", f"dense:{largest_dense}", f"lanczos:{widths[-1]}"],
            progress,
        ),
    }
    result["seconds"] = time.perf_counter() - start
    json_path = write_json_atomic(result, os.path.join(output, "performance.json"))
    md_path = write_text_atomic(markdown(result), os.path.join(output, "performance.md"))
    print(f"wrote {json_path} and {md_path} in {result['seconds']:.0f}s")
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.performance", description=__doc__)
    parser.add_argument("--output", default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="sizes up to 3e3, 2 repeats")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return 0
    run(args.output, args.quick, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
