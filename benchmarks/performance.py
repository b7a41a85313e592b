r"""Performance of driftlab's building blocks, as ratios measured within one run.

    python -m benchmarks.performance            # the full set, ~10 minutes on 2 cores
    python -m benchmarks.performance --quick    # smaller sizes, fewer repeats

Absolute times depend on the machine and on whatever else runs on it; ratios of
two timings taken moments apart in the same process depend much less. Each
timing is the best of `repeats` runs after a warm-up call (so it excludes
compilation, which is reported separately).

1. **Solver**: `driftlab.solve` (diffrax `Dopri8`, jitted) against
   `scipy.integrate.solve_ivp(method="DOP853")` on the same IGR field, at the same
   achieved accuracy: both are measured against a reference solve at
   `REFERENCE_TOLERANCE`, and scipy's tolerance is tuned until its error matches
   driftlab's (the error ratio is reported). Two fields: a 10-dimensional quadratic
   (cheap: per-step overhead decides) and the 1210-parameter MLP on digits (field
   evaluations decide). Target: driftlab 5x faster after compilation.
2. **Order measurement**: a full `driftlab.order_of_accuracy` (GD against IGR on the
   MLP, local and global, 6 step sizes), as a multiple of one jitted gradient
   evaluation, cold (with compilation) and warm.
3. **Principal flow**: one field evaluation of `PrincipalFlow` dense against
   matrix-free Lanczos (`k = 10` Ritz pairs, 20 iterations) as the number of
   parameters grows from 1e2 to 1e5 (MLPs of growing width), and the accuracy of
   the top-k approximation: the Lanczos field and Ritz values against the dense
   ones where dense is affordable, else against a 60-iteration Lanczos field and
   ARPACK's (`driftlab.hessian_eigenpairs`) eigenvalues.
4. **Peak memory** of the largest size of each, each in a fresh subprocess (Linux):
   the resident-set high-water mark of the measured call (reset after set-up) and
   `tracemalloc`'s peak of Python-side allocations (XLA buffers are outside
   tracemalloc's view; the RSS figure includes them).
5. **`ModifiedFlow` cost**: one field evaluation of `ModifiedFlow(GD, h, p)` for
   p = 1..8 on MLPs of 2410 and 9610 parameters (1024 digits), in gradient evaluations and against
   the hand-written `IGRFlow` (order 1; target at most 1.5x), with the fitted growth
   exponent in p against the Taylor-mode bound p^3.

Writes `performance.json`, `performance.md` and `performance.png` to `--output`
(default `benchmarks/results/`).
"""

import argparse
import json
import os
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
from driftlab.integrators._solve import _diffeqsolve

from ._common import command_line, fmt, markdown_table, Progress, RESULTS_DIR, write_text_atomic


#: Tolerance of the reference solve the achieved errors are measured against.
REFERENCE_TOLERANCE = 1e-13
#: driftlab's solver tolerance in the comparison; scipy's is tuned to match its error.
SOLVER_TOLERANCE = 1e-8
#: Target speed-up of `driftlab.solve` over scipy's DOP853 at equal accuracy.
SOLVER_TARGET = 5.0
#: The solver comparisons and their horizons t1 * lambda_max: a cheap field (a 10-dimensional
#: quadratic of condition number 100, over two time constants of its slowest mode), where
#: per-step overhead decides, and a network's field, where field evaluations decide.
SOLVER_CONFIGURATIONS = {"quadratic": 200.0, "mlp": 20.0}
#: Hidden widths of the MLP (75 * width + 10 parameters: 85 to ~1e5).
WIDTHS = (1, 4, 13, 40, 133, 400, 1333)
#: The dense principal flow is measured up to this many parameters (O(n^3) per evaluation).
DENSE_MAX_PARAMETERS = 1000
#: `ModifiedFlow` at order 1 against the hand-written IGR field: at most this many times slower.
MODIFIED_FLOW_TARGET = 1.5
#: Hidden widths (2410 and 9610 parameters), batch and orders of the `ModifiedFlow` cost
#: measurement: big enough that arithmetic, not dispatch, decides the timings.
MODIFIED_FLOW_WIDTHS = (32, 128)
MODIFIED_FLOW_SAMPLES = 1024
MODIFIED_FLOW_ORDERS = tuple(range(1, 9))
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


def _solver_setup(name: str):
    """The problem, IGR flow (h * lambda_max = 0.1), flat start, jitted flat field and t1."""
    if name == "quadratic":
        problem = dl.problems.quadratic(dim=10, condition=100.0)
    else:
        problem = dl.problems.mlp_digits()
    curvature = dl.lambda_max(problem.loss, problem.params, problem.data)
    flow = dl.IGRFlow(problem.loss, 0.1 / curvature)
    flat0, unravel = ravel_pytree(problem.params)
    field = jax.jit(lambda y: ravel_pytree(flow(0.0, unravel(y), problem.data))[0])
    return problem, flow, flat0, field, SOLVER_CONFIGURATIONS[name] / curvature


def _driftlab_solve(problem, flow, t1, tolerance):
    y = dl.solve(flow, problem.params, t1, args=problem.data, rtol=tolerance, atol=tolerance)
    return np.asarray(ravel_pytree(_block(y))[0])


def _driftlab_steps(problem, flow, t1, tolerance) -> int:
    solution = _diffeqsolve(
        flow,
        problem.params,
        np.asarray(0.0),
        np.asarray(t1),
        None,
        problem.data,
        tolerance,
        tolerance,
        100_000,
    )
    return int(solution.num_steps)


def _scipy_solve(field, flat0, t1, tolerance):
    rhs = lambda t, y: np.asarray(field(y))
    return scipy.integrate.solve_ivp(
        rhs, (0.0, t1), np.asarray(flat0), method="DOP853", rtol=tolerance, atol=tolerance
    )


def solver_comparison(name: str, repeats: int, progress) -> dict:
    """driftlab.solve vs solve_ivp(DOP853) on one IGR field, at equal achieved accuracy."""
    problem, flow, flat0, field, t1 = _solver_setup(name)
    reference = _driftlab_solve(problem, flow, t1, REFERENCE_TOLERANCE)
    scale = np.linalg.norm(reference)
    error = lambda y: float(np.linalg.norm(y - reference) / scale)
    solution, first = timed(lambda: _driftlab_solve(problem, flow, t1, SOLVER_TOLERANCE))
    driftlab_error = error(solution)
    driftlab_time = best_time(lambda: _driftlab_solve(problem, flow, t1, SOLVER_TOLERANCE), repeats)
    progress(
        f"{name}: driftlab.solve error {driftlab_error:.3g}, {driftlab_time:.4f}s "
        f"({first:.1f}s cold)"
    )
    # scipy: find the tolerance whose achieved error matches driftlab's, by log-log
    # interpolation of error against tolerance, then one secant refinement.
    _block(field(flat0))
    tried = {}
    for tolerance in (1e-7, 1e-9, 1e-11):
        tried[tolerance] = error(_scipy_solve(field, flat0, t1, tolerance).y[:, -1])
    for _ in range(2):
        tols = np.array(sorted(tried))
        errs = np.array([tried[t] for t in tols])
        slope, intercept = np.polyfit(np.log(tols), np.log(errs), 1)
        tolerance = float(np.exp((np.log(driftlab_error) - intercept) / slope))
        tried[tolerance] = error(_scipy_solve(field, flat0, t1, tolerance).y[:, -1])
    # Use the tried tolerance whose error is closest to driftlab's (in log).
    tolerance = min(tried, key=lambda t: abs(np.log(tried[t] / driftlab_error)))
    scipy_result = _scipy_solve(field, flat0, t1, tolerance)
    scipy_time = best_time(lambda: _scipy_solve(field, flat0, t1, tolerance), repeats)
    field_time = best_time(lambda: _block(field(flat0)), 20 * repeats)
    field_share = scipy_result.nfev * field_time / scipy_time
    progress(
        f"{name}: scipy DOP853 at matched tol {tolerance:.3g}: {scipy_time:.4f}s, "
        f"speed-up {scipy_time / driftlab_time:.2f}x"
    )
    return {
        "configuration": name,
        "problem": f"{problem.name} ({flat0.size} parameters), t1 = {t1:.3g}",
        "t1": t1,
        "reference_tolerance": REFERENCE_TOLERANCE,
        "driftlab": {
            "tolerance": SOLVER_TOLERANCE,
            "relative_error": driftlab_error,
            "seconds": driftlab_time,
            "steps": _driftlab_steps(problem, flow, t1, SOLVER_TOLERANCE),
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
        "field_share_of_scipy_time": field_share,
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
    if name in ("solve", "scipy"):
        problem, flow, flat0, field, t1 = _solver_setup("mlp")
        if name == "solve":
            return lambda: _driftlab_solve(problem, flow, t1, SOLVER_TOLERANCE)
        return lambda: _scipy_solve(field, flat0, t1, SOLVER_TOLERANCE)
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


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def probe(name: str) -> dict:
    """Peak memory of one measurement (compilation included) in this fresh process.

    The resident-set high-water mark is reset after set-up (`/proc/self/clear_refs`),
    so the peak is the measurement's own; `getrusage`'s `ru_maxrss` cannot be reset
    and, in a child process, starts from the parent's peak.
    """
    import warnings

    warnings.simplefilter("ignore")
    target = _probe_target(name)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = _status_mb("VmRSS")
    tracemalloc.start()
    target()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_mb("VmHWM")
    return {
        "probe": name,
        "rss_after_setup_mb": baseline,
        "peak_rss_mb": peak,
        "peak_growth_mb": peak - baseline,
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


# 5. ModifiedFlow: cost against the hand-written IGR field and against the order -----------------


def modified_flow_cost(widths, orders, repeats: int, progress) -> dict:
    """One jitted field evaluation of `ModifiedFlow(GD, h, p)`, in gradients and in IGR fields.

    Taylor-mode bound: each of the p + 1 iterates is one jet of order <= p + 1 through
    the map, and a jet of order K costs at most O(K^2) times the primal per nonlinear
    primitive, so the field costs O(p^3) gradients at worst. The fitted exponent of
    cost against p (orders >= 2) is compared with that bound.
    """
    rows = []
    for width in widths:
        problem = dl.problems.mlp_digits(hidden=width, num_samples=MODIFIED_FLOW_SAMPLES)
        n = int(ravel_pytree(problem.params)[0].size)
        h = 0.1 / dl.lambda_max(problem.loss, problem.params, problem.data)
        gradient = eqx.filter_jit(jax.grad(problem.loss))
        _block(gradient(problem.params, problem.data))
        gradient_time = best_time(
            lambda: _block(gradient(problem.params, problem.data)), 50 * repeats
        )
        field = eqx.filter_jit(lambda flow, y, args: flow(0.0, y, args))

        def field_time(flow):
            _, first = timed(lambda: _block(field(flow, problem.params, problem.data)))
            seconds = best_time(
                lambda: _block(field(flow, problem.params, problem.data)), 10 * repeats
            )
            return seconds, first - seconds

        igr_time, _ = field_time(dl.IGRFlow(problem.loss, h))
        step = dl.GradientDescent(problem.loss)
        for order in orders:
            seconds, compile_seconds = field_time(dl.ModifiedFlow(step, h, order))
            rows.append(
                {
                    "parameters": n,
                    "order": order,
                    "seconds": seconds,
                    "gradients": seconds / gradient_time,
                    "igr_fields": seconds / igr_time,
                    "igr_gradients": igr_time / gradient_time,
                    "compile_seconds": compile_seconds,
                }
            )
            progress(
                f"ModifiedFlow p={order}, {n} parameters: {seconds / gradient_time:.1f} "
                f"gradients, {seconds / igr_time:.2f}x IGR (compiled in {compile_seconds:.1f}s)"
            )
    growth = {}
    for n in sorted({row["parameters"] for row in rows}):
        points = [(r["order"], r["gradients"]) for r in rows if r["parameters"] == n]
        points = [(p, g) for p, g in points if p >= 2]
        if len(points) >= 2:
            exponent = np.polyfit(*np.log(np.array(points)).T, 1)[0]
            growth[str(n)] = float(exponent)
    order_one = [row["igr_fields"] for row in rows if row["order"] == 1]
    return {
        "rows": rows,
        "cost_exponent_in_p": growth,
        "taylor_mode_bound_exponent": 3,
        "order_one_over_igr_worst": max(order_one) if order_one else None,
        "order_one_target": MODIFIED_FLOW_TARGET,
        "order_one_target_met": bool(order_one) and max(order_one) <= MODIFIED_FLOW_TARGET,
    }


# Figures ---------------------------------------------------------------------------------------


def write_figure(result: dict, output: str) -> str:
    """Two log-log panels: `ModifiedFlow` cost against p, principal field cost against n."""
    import matplotlib.pyplot as plt

    from driftlab.plotting import save_figure

    figure, (left, right) = plt.subplots(1, 2, figsize=(10.4, 3.9))
    rows = result["modified_flow"]["rows"]
    for n in sorted({row["parameters"] for row in rows}):
        orders = np.array([r["order"] for r in rows if r["parameters"] == n])
        cost = np.array([r["gradients"] for r in rows if r["parameters"] == n])
        left.loglog(orders, cost, "o-", ms=4, label=f"ModifiedFlow, {n} parameters")
        left.loglog(orders, cost[0] * orders**3, ":", color="grey", lw=0.8)
    left.axhline(rows[0]["igr_gradients"], color="k", lw=0.8, ls="--", label="IGRFlow")
    left.set_xticks(orders, [str(p) for p in orders])
    left.minorticks_off()
    left.set_xlabel("order p")
    left.set_ylabel("one field evaluation / one gradient")
    left.set_title("ModifiedFlow(GD) cost (dotted: p^3 bound)", fontsize=9)
    principal = result["principal"]
    for method in ("dense", "lanczos"):
        points = [(r["parameters"], r[method]["seconds"]) for r in principal if method in r]
        right.loglog(*zip(*points), "o-", ms=4, label=f"{method}")
    right.set_xlabel("parameters n")
    right.set_ylabel("seconds per field evaluation")
    right.set_title(f"PrincipalFlow field (k = {PRINCIPAL_K})", fontsize=9)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(figure, os.path.join(output, "performance.png"))


# Report ----------------------------------------------------------------------------------------


def _solver_section(solvers: list[dict]) -> list[str]:
    rows = []
    for solver in solvers:
        d, s = solver["driftlab"], solver["scipy"]
        rows.append(
            [
                solver["problem"],
                f"{d['relative_error']:.2g} / {s['relative_error']:.2g}",
                f"{d['steps']} / {s['field_evaluations']}",
                d["seconds"],
                s["seconds"],
                f"**{solver['speedup']:.2f}x**",
                f"{100 * solver['field_share_of_scipy_time']:.0f}%",
                "met" if solver["target_met"] else "not met",
                d["compile_seconds"],
            ]
        )
    return [
        "## 1. `driftlab.solve` (diffrax Dopri8) vs `scipy.integrate.solve_ivp` (DOP853)",
        "",
        "IGR fields at h * lambda_max = 0.1, t = 0..t1; relative errors against a "
        f"reference solve at tolerance {REFERENCE_TOLERANCE:g}; scipy's tolerance is tuned "
        "until its error matches driftlab's. *scipy in field calls*: the share of scipy's "
        "time spent in its (jitted) field calls; when those calls are compute-bound, "
        "one over it bounds the speed-up of any solver making as many evaluations. "
        f"Target {SOLVER_TARGET:g}x.",
        "",
        markdown_table(
            [
                "field",
                "rel. error driftlab / scipy",
                "driftlab steps / scipy evaluations",
                "driftlab s",
                "scipy s",
                "speed-up",
                "scipy in field calls",
                "target",
                "driftlab compile s",
            ],
            rows,
        ),
    ]


def _modified_flow_section(cost: dict) -> list[str]:
    exponents = ", ".join(
        f"{n} parameters: {value:.2f}" for n, value in cost["cost_exponent_in_p"].items()
    )
    return [
        "## 5. `ModifiedFlow(GD, h, p)`: one field evaluation against IGR and against p",
        "",
        "In units of one jitted gradient of the same loss (and of the hand-written "
        "`IGRFlow` field). Order 1 against IGR: worst "
        f"{fmt(cost['order_one_over_igr_worst'])}x, target {cost['order_one_target']:g}x: "
        f"**{'met' if cost['order_one_target_met'] else 'not met'}**. Fitted exponent of "
        f"cost against p (p >= 2): {exponents or '-'}; Taylor-mode bound "
        f"p^{cost['taylor_mode_bound_exponent']}.",
        "",
        markdown_table(
            ["parameters", "p", "gradients", "x IGR", "IGR (gradients)", "compile s"],
            [
                [
                    row["parameters"],
                    row["order"],
                    row["gradients"],
                    row["igr_fields"],
                    row["igr_gradients"],
                    row["compile_seconds"],
                ]
                for row in cost["rows"]
            ],
        ),
    ]


def markdown(result: dict) -> str:
    order = result["order_of_accuracy"]
    machine = result["machine"]
    lines = [
        "# Performance (ratios within one run)",
        "",
        f"Command: `{result['command']}`  ",
        f"Runtime: {result['seconds']:.0f} s on {machine['platform']} "
        f"({machine['cpu_count']} cores, load average {machine['load_average'][0]:.1f} at the "
        f"start, jax {machine['jax']}). Times are "
        f"best-of-{result['repeats']} (or more) after a warm-up.",
        "",
        *_solver_section(result["solver"]),
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
        "## 4. Peak memory (fresh process per measurement, compilation included)",
        "",
        "Resident-set high-water mark of the measured call, reset after set-up; "
        "tracemalloc sees Python allocations only (not XLA's buffers).",
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
        "",
        *_modified_flow_section(result["modified_flow"]),
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
        "solver": [solver_comparison(name, repeats, progress) for name in SOLVER_CONFIGURATIONS],
        "order_of_accuracy": order_measurement_cost(repeats, progress),
        "principal": principal_scaling(widths, repeats, progress),
        "memory": peak_memory(
            ["solve", "scipy", "order", f"dense:{largest_dense}", f"lanczos:{widths[-1]}"],
            progress,
        ),
        "modified_flow": modified_flow_cost(
            MODIFIED_FLOW_WIDTHS[:1] if quick else MODIFIED_FLOW_WIDTHS,
            MODIFIED_FLOW_ORDERS[:4] if quick else MODIFIED_FLOW_ORDERS,
            repeats,
            progress,
        ),
    }
    result["seconds"] = time.perf_counter() - start
    json_path = write_json_atomic(result, os.path.join(output, "performance.json"))
    md_path = write_text_atomic(markdown(result), os.path.join(output, "performance.md"))
    png_path = write_figure(result, output)
    print(f"wrote {json_path}, {md_path} and {png_path} in {result['seconds']:.0f}s")
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
