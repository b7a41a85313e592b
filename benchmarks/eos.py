"""Edge-of-stability suite: GD on the field's standard networks, and which flow follows it where.

For each problem and learning rate h: full-batch GD, its loss every step, its
sharpness (`driftlab.lambda_max`) and accuracy every few steps; then, over windows
started from GD's iterates before and after the sharpness reaches 2/h, each flow
is solved from GD's iterate for the window's time and compared with GD at the
window's end (distance relative to GD's displacement over the window, and the
error of the predicted loss). The verdicts check Cohen et al.'s findings,
measured: progressive sharpening, then the sharpness hovering within 10% of 2/h
while the loss still falls, and gradient flow leaving GD once EoS begins.

    python -m benchmarks.eos --preset smoke|fast|full
    driftlab bench --suite eos --preset fast
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from benchmarks._common import (
    command_line,
    fmt,
    markdown_table,
    Progress,
    RESULTS_DIR,
    write_text_atomic,
)
from driftlab._io import machine_info, write_json_atomic
from driftlab._tree import tree_norm, tree_sub


#: The band around 2/h that counts as "hovering" (Cohen et al.: "hovers just above").
HOVER_BAND = 0.10
#: Gradient flow "leaves GD" when its mean relative window distance after onset is at least
#: this many times the mean before onset (fixed before the measurements).
LEAVE_FACTOR = 3.0
#: Solver tolerances of the flow windows: far below the distances measured (>= 1e-4 relative).
RTOL = ATOL = 1e-7


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make_problem: Callable[[], dl.problems.Problem]
    hs: tuple[float, ...]
    num_steps: int = 1500
    every: int = 100  # sharpness, accuracy and window starts every `every` steps
    window: int = 10  # GD steps per flow window
    windows_per_phase: int = 1  # windows before and after onset
    principal_k: int = 3  # Ritz pairs of the Lanczos principal flow
    flows: tuple[str, ...] = ("gradient", "igr", "modified-2", "principal")


def _presets():
    from driftlab.problems import cnn_mnist1d, deep_linear, fc_digits

    smoke = [
        Case(
            "fc-digits",
            lambda: fc_digits(width=16, depth=2, num_samples=64),
            (0.06,),
            num_steps=40,
            every=10,
            window=4,
            windows_per_phase=1,
            principal_k=2,
            flows=("gradient", "igr"),
        ),
    ]
    fast = [
        Case("fc-digits", lambda: fc_digits(width=200, depth=2, num_samples=1000), (0.035,)),
        Case("cnn-mnist1d", lambda: cnn_mnist1d(num_samples=500), (0.035,)),
        Case("deep-linear", lambda: deep_linear(dim=20, depth=10, num_samples=500), (0.03,)),
    ]
    full = [
        dataclasses.replace(
            fast[0],
            make_problem=lambda: fc_digits(width=200, depth=2, num_samples=1797),
            hs=(0.025, 0.03, 0.035),
            num_steps=5000,
            every=50,
            windows_per_phase=4,
        ),
        dataclasses.replace(
            fast[1],
            make_problem=lambda: cnn_mnist1d(num_samples=5000),
            hs=(0.03, 0.035),
            num_steps=5000,
            every=50,
            windows_per_phase=4,
        ),
        dataclasses.replace(
            fast[2],
            make_problem=lambda: deep_linear(dim=50, depth=20, num_samples=1000),
            hs=(0.01,),
            num_steps=5000,
            every=50,
            windows_per_phase=4,
        ),
    ]
    return {"smoke": smoke, "fast": fast, "full": full}


def flow_factories(problem, step, k: int) -> dict:
    """The flows compared with GD, as `h -> (flow, complex_state)`."""
    return {
        "gradient": lambda h: (dl.GradientFlow(problem.loss), False),
        "igr": lambda h: (dl.IGRFlow(problem.loss, h), False),
        "modified-2": lambda h: (dl.ModifiedFlow(step, h, order=2), False),
        # Beyond h * lambda = 1 the principal flow's field is complex: it runs on a complex
        # state whose real part is compared with GD.
        "principal": lambda h: (dl.PrincipalFlow(problem.loss, h, method="lanczos", k=k), True),
        # CENTRAL FLOW HOOK: once `driftlab.CentralFlow` exists (issue: central flow), add
        #     "central": lambda h: (dl.CentralFlow(problem.loss, h), False),
        # here; it models GD's time average at EoS, so compare it also with GD averaged
        # over the window's last steps.
    }


def _gd_chunk(loss):
    @eqx.filter_jit
    def chunk(params, h, data, length):
        def body(x, _):
            value, grad = jax.value_and_grad(loss)(x, data)
            return jtu.tree_map(lambda a, b: a - h * b, x, grad), value

        return jax.lax.scan(body, params, None, length=length)

    return chunk


def run_gd(problem, h, case, report):
    """GD for `case.num_steps`; loss every step, sharpness and accuracy every `case.every`."""
    chunk = _gd_chunk(problem.loss)
    params, losses, checkpoints = problem.params, [], []
    for start in range(0, case.num_steps + 1, case.every):
        sharpness = dl.lambda_max(problem.loss, params, problem.data)
        checkpoints.append(
            {
                "step": start,
                "sharpness": sharpness,
                "accuracy": float(problem.loss.accuracy(params, problem.data)),
                "loss": float(problem.loss(params, problem.data)),
                "params": params,
            }
        )
        if not np.isfinite(checkpoints[-1]["loss"]):
            raise dl.MeasurementError(f"GD diverged at step {start} with h = {h}")
        if start < case.num_steps:
            params, chunk_losses = chunk(params, h, problem.data, case.every)
            losses.extend(np.asarray(chunk_losses).tolist())
        if start % (10 * case.every) == 0:
            report(
                f"{problem.name} h={h:g} step {start}: loss {checkpoints[-1]['loss']:.4g}, "
                f"h*sharpness/2 {h * sharpness / 2:.3f}"
            )
    return losses, checkpoints


def onset_step(checkpoints, h):
    """The first checkpoint whose sharpness reaches 2/h, or None."""
    for point in checkpoints:
        if point["sharpness"] >= 2 / h:
            return point["step"]
    return None


def window_starts(checkpoints, onset, case):
    """`windows_per_phase` checkpoints before onset (from a fifth of the way in) and after."""
    last = case.num_steps - case.window
    steps = [p["step"] for p in checkpoints if p["step"] <= last]
    if onset is None:
        before, after = [s for s in steps if s >= case.num_steps // 5], []
    else:
        before = [s for s in steps if onset // 5 <= s < onset]
        after = [s for s in steps if s >= onset]
    pick = lambda options: (
        [
            options[i]
            for i in sorted(
                {round(j) for j in np.linspace(0, len(options) - 1, case.windows_per_phase)}
            )
        ]
        if options
        else []
    )
    return pick(before), pick(after)


def measure_window(problem, step, make_flow, params, h, case):
    """One flow over one window from GD's iterate `params`; failures are data."""
    gd_end = dl.integrators.advance(step, params, h, case.window, problem.data)
    displacement = float(tree_norm(tree_sub(gd_end, params)))
    gd_loss = float(problem.loss(gd_end, problem.data))
    try:
        flow, complex_state = make_flow(h)
        start = params
        if complex_state:
            start = jtu.tree_map(lambda x: x.astype(jnp.complex128), params)
        end = dl.solve(flow, start, case.window * h, args=problem.data, rtol=RTOL, atol=ATOL)
        end = jtu.tree_map(jnp.real, end)
    except (dl.DriftlabError, ValueError) as error:
        return {"failure": f"{type(error).__name__}: {str(error)[:160]}"}
    distance = float(tree_norm(tree_sub(end, gd_end)))
    flow_loss = float(problem.loss(end, problem.data))
    return {
        "distance": distance,
        "relative_distance": distance / displacement,
        "flow_loss": flow_loss,
        "gd_loss": gd_loss,
        "loss_error": abs(flow_loss - gd_loss) / gd_loss,
    }


def _distances(windows, phase):
    return [w["relative_distance"] for w in windows if w["phase"] == phase and "distance" in w]


def verdicts(run) -> dict:
    """Cohen et al.'s findings on one run, measured; None where the run never reached EoS."""
    h, points, onset = run["h"], run["checkpoints"], run["onset_step"]
    ratios = np.array([p["sharpness"] * h / 2 for p in points])
    steps = np.array([p["step"] for p in points])
    result = {"reached_eos": onset is not None, "initial_ratio": float(ratios[0])}
    if onset is None:
        return result
    after = ratios[steps >= onset]
    within = np.abs(after - 1) <= HOVER_BAND
    losses = np.asarray(run["losses"])
    every = steps[1] - steps[0]
    loss_at_onset = float(np.mean(losses[onset : onset + every]))
    loss_at_end = float(np.mean(losses[-every:]))
    result |= {
        "progressive_sharpening": bool(ratios[0] < 1 - HOVER_BAND and after[0] >= 1),
        "fraction_within_band": float(np.mean(within)),
        "median_deviation": float(np.median(np.abs(after - 1))),
        "hovering": bool(np.mean(within) >= 0.8 and np.median(np.abs(after - 1)) <= HOVER_BAND),
        "loss_at_onset": loss_at_onset,
        "loss_at_end": loss_at_end,
        "loss_still_falls": bool(loss_at_end < loss_at_onset),
    }
    gradient = run["windows"].get("gradient", [])
    before = _distances(gradient, "before")
    later = _distances(gradient, "after")
    if before and later:
        factor = float(np.mean(later) / np.mean(before))
        result |= {"gradient_flow_factor": factor, "gradient_flow_leaves": factor >= LEAVE_FACTOR}
    return result


def run_case(case, progress):
    problem = case.make_problem()
    num_params = int(sum(np.size(x) for x in jtu.tree_leaves(problem.params)))
    step = dl.GradientDescent(problem.loss)
    flows = flow_factories(problem, step, case.principal_k)
    flows = {name: flows[name] for name in case.flows}
    runs = []
    for h in case.hs:
        start = time.perf_counter()
        losses, checkpoints = run_gd(problem, h, case, progress)
        onset = onset_step(checkpoints, h)
        progress(f"{case.name} h={h:g}: GD done, onset {onset}")
        by_step = {p["step"]: p for p in checkpoints}
        before, after = window_starts(checkpoints, onset, case)
        windows = {name: [] for name in flows}
        for phase, starts in (("before", before), ("after", after)):
            for first in starts:
                for name, make_flow in flows.items():
                    record = measure_window(
                        problem, step, make_flow, by_step[first]["params"], h, case
                    )
                    windows[name].append({"phase": phase, "start": first, **record})
                    outcome = record.get("failure") or f"{record['relative_distance']:.3g}"
                    progress(f"{case.name} h={h:g} {name} window at {first} ({phase}): {outcome}")
        run = {
            "problem": case.name,
            "num_params": num_params,
            "num_samples": int(problem.data["x"].shape[0]),
            "h": h,
            "two_over_h": 2 / h,
            "losses": losses,
            "checkpoints": [{k: v for k, v in p.items() if k != "params"} for p in checkpoints],
            "onset_step": onset,
            "window": case.window,
            "windows": windows,
            "seconds": time.perf_counter() - start,
        }
        run["verdict"] = verdicts(run)
        runs.append(run)
    return runs


def overall_verdict(runs) -> dict:
    """Each finding holds on every run that reached EoS (and at least one did)."""
    reached = [r["verdict"] for r in runs if r["verdict"]["reached_eos"]]
    keys = ["progressive_sharpening", "hovering", "loss_still_falls", "gradient_flow_leaves"]
    return {
        "runs_reaching_eos": f"{len(reached)}/{len(runs)}",
        **{key: bool(reached) and all(v.get(key, False) for v in reached) for key in keys},
    }


def _mean_over(windows, phase, key):
    values = [w[key] for w in windows if w["phase"] == phase and key in w]
    return float(np.mean(values)) if values else None


def markdown(result) -> str:
    lines = [
        f"# Edge-of-stability suite ({result['preset']})",
        "",
        f"Command: `{result['command']}`; {result['seconds']:.0f} s wall, "
        f"{result['cpu_seconds']:.0f} s CPU (this process) on "
        f"{result['machine'].get('cpu_count')} CPUs; load average at start "
        f"{fmt(result['load_average'])} (other jobs shared the machine when it is above 2).",
        "",
        "## Verdict (Cohen et al. 2021, measured)",
        "",
        markdown_table(["finding", "holds"], [[k, str(v)] for k, v in result["verdict"].items()]),
        "",
        "## Runs",
        "",
    ]
    rows = []
    for run in result["runs"]:
        v = run["verdict"]
        rows.append(
            [
                run["problem"],
                str(run["num_params"]),
                run["h"],
                fmt(v["initial_ratio"]),
                run["onset_step"] if run["onset_step"] is not None else "never",
                fmt(v.get("fraction_within_band")),
                fmt(v.get("median_deviation")),
                f"{fmt(v.get('loss_at_onset'))} -> {fmt(v.get('loss_at_end'))}",
                fmt(v.get("gradient_flow_factor")),
                fmt(run["checkpoints"][-1]["accuracy"]),
            ]
        )
    lines.append(
        markdown_table(
            [
                "problem",
                "params",
                "h",
                "h S0 / 2",
                "onset step",
                "fraction within 10% of 2/h",
                "median abs(h S / 2 - 1)",
                "loss onset -> end",
                "GF distance after / before",
                "final accuracy",
            ],
            rows,
        )
    )
    lines += ["", "## Flows over windows from GD's iterates", ""]
    lines.append(
        "Mean over windows of the distance to GD at the window's end relative to GD's "
        "displacement over the window, and of the relative error of the predicted loss."
    )
    lines.append("")
    rows = []
    for run in result["runs"]:
        for name, windows in run["windows"].items():
            failures = sum("failure" in w for w in windows)
            rows.append(
                [
                    run["problem"],
                    run["h"],
                    name,
                    fmt(_mean_over(windows, "before", "relative_distance")),
                    fmt(_mean_over(windows, "after", "relative_distance")),
                    fmt(_mean_over(windows, "before", "loss_error")),
                    fmt(_mean_over(windows, "after", "loss_error")),
                    failures,
                ]
            )
    lines.append(
        markdown_table(
            [
                "problem",
                "h",
                "flow",
                "distance before EoS",
                "distance at EoS",
                "loss error before",
                "loss error at EoS",
                "failed windows",
            ],
            rows,
        )
    )
    lines += [""] + [f"![{name}]({name})" for name in result["figures"]]
    return "\n".join(lines) + "\n"


def figures(result, output) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for problem in dict.fromkeys(r["problem"] for r in result["runs"]):
        runs = [r for r in result["runs"] if r["problem"] == problem]
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        for run in runs:
            steps = [p["step"] for p in run["checkpoints"]]
            line = axes[0].plot(steps, [p["sharpness"] for p in run["checkpoints"]], "o-", ms=2)
            axes[0].axhline(2 / run["h"], color=line[0].get_color(), ls="--", lw=1)
            axes[0].plot([], [], color=line[0].get_color(), label=f"h={run['h']:g} (-- 2/h)")
        axes[0].set(xlabel="step", ylabel="sharpness", title=f"{problem}: sharpness vs 2/h")
        axes[0].legend(fontsize=8)
        run = runs[-1]
        axes[1].semilogy(run["losses"], color="k", lw=0.8, label="GD")
        for name, windows in run["windows"].items():
            ok = [w for w in windows if "flow_loss" in w]
            axes[1].semilogy(
                [w["start"] + run["window"] for w in ok],
                [w["flow_loss"] for w in ok],
                "o",
                ms=5,
                label=name,
            )
        if run["onset_step"] is not None:
            axes[1].axvline(run["onset_step"], color="gray", ls=":")
        axes[1].set(xlabel="step", ylabel="loss", title=f"loss, h={run['h']:g}: GD and each flow")
        axes[1].legend(fontsize=8)
        for name, windows in run["windows"].items():
            ok = [w for w in windows if "relative_distance" in w]
            axes[2].semilogy(
                [w["start"] for w in ok], [w["relative_distance"] for w in ok], "o-", label=name
            )
        if run["onset_step"] is not None:
            axes[2].axvline(run["onset_step"], color="gray", ls=":", label="sharpness = 2/h")
        axes[2].set(
            xlabel="window start (step)",
            ylabel="|flow - GD| / |GD displacement|",
            title=f"error per window of {run['window']} steps",
        )
        axes[2].legend(fontsize=8)
        fig.tight_layout()
        name = f"eos_{problem}.png"
        fig.savefig(os.path.join(output, name), dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def report(result, output) -> dict:
    """Figures, JSON and Markdown of a finished result (also of merged partial runs)."""
    result["verdict"] = overall_verdict(result["runs"])
    os.makedirs(output, exist_ok=True)
    result["figures"] = figures(result, output)
    write_json_atomic(result, os.path.join(output, "eos.json"))
    write_text_atomic(markdown(result), os.path.join(output, "eos.md"))
    print(f"verdict: {result['verdict']}", file=sys.stderr)
    return result


def run(preset: str, output: str = RESULTS_DIR, argv=(), problems=None, flows=None) -> dict:
    cases = [c for c in _presets()[preset] if problems is None or c.name in problems]
    if flows is not None:
        cases = [
            dataclasses.replace(c, flows=tuple(f for f in c.flows if f in flows)) for c in cases
        ]
    progress = Progress()
    cpu_start = time.process_time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs = []
    for case in cases:
        runs.extend(run_case(case, progress))
    result = {
        "preset": preset,
        "command": command_line("benchmarks.eos", argv),
        "machine": machine_info(),
        "load_average": load,
        "hover_band": HOVER_BAND,
        "leave_factor": LEAVE_FACTOR,
        "runs": runs,
        "seconds": progress.elapsed,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    return report(result, output)


def merge(paths, output) -> dict:
    """One report from several partial results (e.g. one process per problem)."""
    parts = [json.loads(open(path).read()) for path in paths]
    result = parts[0] | {
        "command": " ; ".join(part["command"] for part in parts),
        "runs": [run for part in parts for run in part["runs"]],
        "seconds": max(part["seconds"] for part in parts),
        "cpu_seconds": sum(part["cpu_seconds"] for part in parts),
        "load_average": max(part["load_average"] for part in parts),
    }
    return report(result, output)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smoke", "fast", "full"], default="fast")
    parser.add_argument("--output", default=RESULTS_DIR)
    parser.add_argument("--problems", nargs="+", help="run only these problems of the preset")
    parser.add_argument("--flows", nargs="+", help="compare only these flows")
    parser.add_argument("--merge", nargs="+", help="merge these eos.json files into one report")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.output)
    else:
        run(args.preset, args.output, argv, args.problems, args.flows)


if __name__ == "__main__":
    main()
