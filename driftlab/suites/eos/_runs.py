"""Edge-of-stability suite: GD on the field's standard networks, and which flow follows it where.

For each problem and learning rate h: full-batch GD, its loss every step, its
sharpness (`driftlab.lambda_max`) and accuracy every few steps; then, over windows
started from GD's iterates before the sharpness reaches 2/h and once GD
oscillates at the edge, each flow is solved from GD's iterate for the window's
time (tens to hundreds of steps) and compared with GD: with its iterate at the
window's end, and with its *time-averaged* iterates (a Gaussian average over a
few steps, which removes the period-2 oscillation), both relative to the
parameter norm, plus the sharpness at the flow's endpoint against 2/h and the
error of the predicted loss. The central flow (Cohen, Damian et al. 2025) is
compared with GD's time average. The verdicts check Cohen et al. 2021's
findings, measured: progressive sharpening, then the sharpness hovering within
10% of 2/h while the loss still falls, and gradient flow leaving GD once EoS
begins.

    driftlab bench --suite eos --preset smoke|fast|full
    python -m benchmarks.eos --preset fast --case cnn-mnist1d  # one case, into eos.json
"""

import argparse
import dataclasses
import json
import os
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from driftlab._io import DEFAULT_OUTPUT, machine_info

from .._output import command_line, Progress
from ._cases import flow_factories, PRESET_GUIDE, presets
from ._measure import (
    HOVER_BAND,
    LEAVE_FACTOR,
    measure_window,
    onset_step,
    oscillation_step,
    verdicts,
)
from ._report import report


#: The name of gradient flow's windows that start and end with the central flow's.
CENTRAL_BASELINE = "gradient (central's windows)"
#: The name of gradient flow's records on the principal flow's windows (when it gets only some).
PRINCIPAL_BASELINE = "gradient (principal's windows)"
#: The command recorded in the results of a run started from Python.
PROGRAM = "driftlab bench --suite eos"


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
        following, _ = chunk(params, h, problem.data, 1)
        midpoint = jtu.tree_map(lambda a, b: (a + b) / 2, params, following)
        checkpoints.append(
            {
                "step": start,
                "sharpness": sharpness,
                # GD can settle on a period-2 orbit whose two iterates straddle 2/h (a
                # deep linear network does): the midpoint is what hovers at 2/h there.
                "midpoint_sharpness": dl.lambda_max(problem.loss, midpoint, problem.data),
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


def window_starts(checkpoints, onset, case, window=None, first_after=None):
    """Window starts: `windows_per_phase` checkpoints before onset, whole windows before it
    (from a fifth of the way in), and as many from `first_after` (default: the onset) on.

    A window started at the onset must be long enough to see what GD does once
    its unstable component has grown (hundreds of steps on fc-digits)."""
    window = case.window if window is None else window
    last = case.num_steps - window
    steps = [p["step"] for p in checkpoints if p["step"] <= last]
    if onset is None:
        before, after = [s for s in steps if s >= case.num_steps // 5], []
    else:
        before = [s for s in steps if onset // 5 <= s <= onset - window]
        after = [s for s in steps if s >= (onset if first_after is None else first_after)]
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


def _onset_in_words(checkpoints, h, onset, oscillating) -> str:
    if onset is None:
        highest = max(h * p["sharpness"] / 2 for p in checkpoints)
        return (
            f"the sharpness stayed below 2/h over {checkpoints[-1]['step']} steps (h S / 2 at "
            f"most {highest:.3f}): no edge of stability"
        )
    rises = "" if oscillating is None else f", the loss first rose at step {oscillating}"
    return f"the sharpness reached 2/h at step {onset}{rises}"


def run_case(case, progress):
    problem = case.make_problem()
    num_params = int(sum(np.size(x) for x in jtu.tree_leaves(problem.params)))
    step = dl.GradientDescent(problem.loss)
    flows = flow_factories(problem, step, case.principal_k, case.principal_iterations)
    flows = {name: flows[name] for name in case.flows}
    runs = []
    gd_only = {h: dataclasses.replace(case, num_steps=steps) for h, steps in case.gd_only}
    if set(gd_only) & set(case.hs):
        raise ValueError(f"{case.name}: a learning rate is both GD-only and windowed.")
    # GD-only runs first: the figure's window panels show the case's last run.
    for h in (*gd_only, *case.hs):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses, checkpoints = run_gd(problem, h, gd_only.get(h, case), progress)
        onset = onset_step(checkpoints, h)
        oscillating = oscillation_step(losses, onset)
        progress(
            f"{case.name} h={h:g}: GD done; {_onset_in_words(checkpoints, h, onset, oscillating)}"
        )
        by_step = {p["step"]: p for p in checkpoints}
        before, after = ([], []) if h in gd_only else window_starts(checkpoints, onset, case)
        windows = {name: [] for name in flows}
        jobs = [("before", first) for first in before] + [("after", first) for first in after]
        # The principal flow's solve can cost a hundred times gradient flow's: it may get
        # only the last oscillating-phase windows.
        principal_jobs = (
            [("after", first) for first in after[-case.principal_windows :]]
            if case.principal_windows
            else jobs
        )
        for phase, first in jobs:
            for name, make_flow in flows.items():
                if name == "principal" and (phase, first) not in principal_jobs:
                    continue
                tic = time.process_time()
                record = measure_window(problem, step, make_flow, by_step[first]["params"], h, case)
                record["cpu_seconds"] = time.process_time() - tic
                windows[name].append({"phase": phase, "start": first, **record})
                outcome = record.get("failure") or (
                    f"|flow - GD average| / |w| {record['average_distance']:.3g}, "
                    f"h S_flow / 2 {record['flow_sharpness_ratio']:.3f}"
                )
                progress(f"{case.name} h={h:g} {name} window at {first} ({phase}): {outcome}")
        if case.principal_windows and {"principal", "gradient"} <= windows.keys():
            windows[PRINCIPAL_BASELINE] = [
                w for w in windows["gradient"] if (w["phase"], w["start"]) in principal_jobs
            ]
        # The central flow models GD's oscillation at its equilibrium size: its windows start
        # once GD's loss has risen (GD oscillates), not at the onset.
        central_window = case.central_window or case.window
        _, central_starts = window_starts(checkpoints, onset, case, central_window, oscillating)
        if case.central_k and central_starts and h not in gd_only:
            # Gradient flow over the very same windows, the baseline the central flow beats or not.
            windows |= {"central": [], CENTRAL_BASELINE: []}
            compared = {
                "central": lambda h: (dl.CentralFlow(problem.loss, h, k=case.central_k), "central"),
                CENTRAL_BASELINE: flow_factories(problem, step, 1)["gradient"],
            }
            for first in central_starts[-case.central_windows :]:
                for name, make_flow in compared.items():
                    tic = time.process_time()
                    record = measure_window(
                        problem,
                        step,
                        make_flow,
                        by_step[first]["params"],
                        h,
                        case,
                        central_window,
                    )
                    record["cpu_seconds"] = time.process_time() - tic
                    windows[name].append({"phase": "after", "start": first, **record})
                    outcome = record.get("failure") or f"{record['average_distance']:.3g}"
                    progress(f"{case.name} h={h:g} {name} window at {first}: {outcome}")
        jax.clear_caches()
        run = {
            "problem": case.name,
            "num_params": num_params,
            "num_samples": int(problem.data["x"].shape[0]),
            "h": h,
            "two_over_h": 2 / h,
            "losses": losses,
            "checkpoints": [{k: v for k, v in p.items() if k != "params"} for p in checkpoints],
            "onset_step": onset,
            "oscillation_step": oscillating,
            "window": case.window,
            "width": case.width,
            "windows": windows,
            "seconds": time.perf_counter() - start,
            # On a loaded machine the wall time counts others' jobs; this process's CPU time
            # does not, and bounds the idle wall time of a run that keeps ~one core busy.
            "cpu_seconds": time.process_time() - cpu_start,
        }
        run["verdict"] = verdicts(run)
        runs.append(run)
    return runs


def run(
    preset: str,
    output: str = DEFAULT_OUTPUT,
    argv=(),
    problems=None,
    flows=None,
    only=None,
    *,
    program: str = PROGRAM,
) -> dict:
    """The preset's cases (or those of `problems`); with `only` (a case's name), that case
    alone, its runs replacing its earlier ones in `output`'s eos.json."""
    if only is not None:
        if only not in [c.name for c in presets()[preset]]:
            raise dl.InputError(
                f"`only` must name one of the {preset} preset's cases "
                f"{[c.name for c in presets()[preset]]}, got {only!r}."
            )
        problems = [only]
    cases = [c for c in presets()[preset] if problems is None or c.name in problems]
    if flows is not None:
        cases = [
            dataclasses.replace(c, flows=tuple(f for f in c.flows if f in flows)) for c in cases
        ]
    duration, purpose = PRESET_GUIDE[preset]
    guide = f"EoS suite, {preset} preset ({duration} on 2 CPU cores): {purpose}."
    print(textwrap.fill(guide, 88), flush=True)
    progress = Progress()
    cpu_start = time.process_time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs = []
    for case in cases:
        runs.extend(run_case(case, progress))
    result = {
        "preset": preset,
        "command": command_line(program, argv),
        "machine": machine_info(),
        "load_average": load,
        "hover_band": HOVER_BAND,
        "leave_factor": LEAVE_FACTOR,
        "runs": runs,
        "seconds": progress.elapsed,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    if only is not None:
        with open(os.path.join(output, "eos.json")) as file:
            result = replace_runs(json.load(file), result, [c.name for c in presets()[preset]])
    return report(result, output)


def replace_runs(earlier: dict, rerun: dict, order) -> dict:
    """`earlier`'s result with its runs of `rerun`'s problems replaced by `rerun`'s, in the
    preset's problem `order`; times and command add the rerun's to what remains."""
    if earlier["preset"] != rerun["preset"]:
        raise dl.InputError(
            f"The existing eos.json is of the {earlier['preset']!r} preset, not "
            f"{rerun['preset']!r}: rerun the whole preset, or pass `--output` of a "
            f"{rerun['preset']!r} result."
        )
    problems = {r["problem"] for r in rerun["runs"]}
    dropped = [r for r in earlier["runs"] if r["problem"] in problems]
    kept = [r for r in earlier["runs"] if r["problem"] not in problems]
    runs = sorted(kept + rerun["runs"], key=lambda r: order.index(r["problem"]))
    return earlier | {
        "command": f"{earlier['command']} ; {rerun['command']}",
        "machine": rerun["machine"],
        "runs": runs,
        "seconds": earlier["seconds"] - sum(r["seconds"] for r in dropped) + rerun["seconds"],
        "cpu_seconds": earlier["cpu_seconds"]
        - sum(r.get("cpu_seconds", 0.0) for r in dropped)
        + rerun["cpu_seconds"],
        "load_average": max(earlier["load_average"], rerun["load_average"]),
    }


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


def main(argv=None, *, prog: str = PROGRAM, default_output: str = DEFAULT_OUTPUT):
    """The suite's own command line (`--case`, `--problems`, `--flows`, `--merge`), as `prog`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smoke", "fast", "full"], default="fast")
    parser.add_argument("--output", default=default_output)
    parser.add_argument("--problems", nargs="+", help="run only these problems of the preset")
    parser.add_argument("--flows", nargs="+", help="compare only these flows")
    parser.add_argument("--merge", nargs="+", help="merge these eos.json files into one report")
    parser.add_argument(
        "--case",
        help="rerun only this case of the preset and replace its runs in the eos.json "
        "already in --output (figures and Markdown are rewritten)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.output)
    else:
        run(args.preset, args.output, argv, args.problems, args.flows, args.case, program=prog)
