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

    python -m benchmarks.eos --preset smoke|fast|full
    python -m benchmarks.eos --preset fast --case cnn-mnist1d  # one case, into eos.json
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
#: Gradient flow "leaves GD" when its mean distance to GD's time-averaged iterates at the end
#: of windows started once GD oscillates at the edge is at least this many times the mean over
#: windows of the same length before the sharpness reaches 2/h (fixed before the measurements).
LEAVE_FACTOR = 3.0
#: Solver tolerances of the flow windows: far below the distances measured (>= 1e-5 of the
#: parameter norm).
RTOL = ATOL = 1e-7
#: Deep linear network: a product starting at 0.85^10 = 0.2 of the identity sharpens
#: progressively; at h = 0.06 GD settles on a period-2 orbit whose midpoint hovers at 2/h.
DEEP_LINEAR_SCALE = 0.85
DEEP_LINEAR_H = 0.06
#: The name of gradient flow's windows that start and end with the central flow's.
CENTRAL_BASELINE = "gradient (central's windows)"
#: The name of gradient flow's records on the principal flow's windows (when it gets only some).
PRINCIPAL_BASELINE = "gradient (principal's windows)"
#: Euler substeps per GD step of the central flow (the authors' position-level scheme).
CENTRAL_SUBSTEPS = 4


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make_problem: Callable[[], dl.problems.Problem]
    hs: tuple[float, ...]
    num_steps: int = 1500
    every: int = 100  # sharpness, accuracy and window starts every `every` steps
    window: int = 100  # GD steps per flow window
    width: float = 3.0  # sigma (in steps) of the Gaussian time average of GD's iterates
    windows_per_phase: int = 2  # windows before onset and once GD oscillates
    principal_k: int = 3  # Ritz pairs of the Lanczos principal flow
    principal_iterations: int | None = None  # its Lanczos steps (None: PrincipalFlow's default)
    principal_windows: int = 0  # the last this many oscillating-phase windows get it (0: all)
    flows: tuple[str, ...] = ("gradient", "igr", "modified-2", "principal")
    central_k: int = 0  # top eigenpairs of the central flow (0: no central flow)
    central_window: int = 0  # its windows' length, in steps (0: `window`)
    central_windows: int = 1  # the last this many oscillating-phase windows get it
    # Further `(h, num_steps)` at which only GD runs (sharpness, loss, accuracy, the verdicts
    # on GD): Cohen et al.'s first finding is that the sharpness settles at 2/h for each h.
    gd_only: tuple[tuple[float, int], ...] = ()


def _presets():
    from driftlab.problems import cnn_mnist1d, deep_linear, fc_digits

    smoke = [
        Case(
            "fc-digits",
            lambda: fc_digits(width=16, depth=2, num_samples=64),
            (0.06,),
            num_steps=40,
            every=10,
            window=8,
            width=1.0,
            windows_per_phase=1,
            principal_k=2,
            flows=("gradient", "igr"),
            gd_only=((0.05, 30),),
        ),
    ]
    fast = [
        Case(
            "fc-digits",
            lambda: fc_digits(width=200, depth=2, num_samples=1000),
            (0.035,),
            # GD's sharpness passes 2/h at step 800 and its loss first rises ~300 steps
            # later: windows of 400 steps from the onset see it. IGR, ModifiedFlow and the
            # principal flow over such windows cost minutes each at 55k parameters: they
            # are compared on deep-linear here and on fc-digits in the full preset.
            window=400,
            flows=("gradient",),
            central_k=1,
            central_window=40,
            # At h = 0.03 the sharpness reaches 2/h only at step 1500 (probed): 2,500 steps.
            gd_only=((0.03, 2500),),
        ),
        Case(
            "deep-linear",
            lambda: deep_linear(dim=20, depth=10, num_samples=500, init_scale=DEEP_LINEAR_SCALE),
            (DEEP_LINEAR_H,),
            # Its sharpness passes 2/h within 10 steps, during the first fit, so no window
            # fits before the onset; from there GD settles on a period-2 orbit.
            num_steps=800,
            every=20,
            window=40,
            # 43 to 56 Hessian eigenvalues have h lambda between 1 and 3 here. Cut at k = 3 of
            # 13 Ritz pairs inside that cluster, the principal flow's field jumps where the 3rd
            # and 4th Ritz values nearly meet: 177 solver steps per GD step (60% rejected) at
            # step 760, about 47 CPU minutes a 40-step window. Uncut (k = all 13 Ritz pairs,
            # 29 Hessian-vector products per field evaluation) it takes 7 steps per GD step
            # there (121 s CPU for the window) but 25 at the onset (about 7 CPU minutes a
            # window): it gets the last window only.
            flows=("gradient", "igr", "modified-2", "principal"),
            principal_k=13,
            principal_iterations=13,
            principal_windows=1,
            central_k=2,
            central_windows=2,
        ),
        Case(
            "cnn-mnist1d",
            # 250 signals keep a full-batch gradient of the 27,338-parameter CNN at ~0.05 s of
            # CPU: its sharpness starts at 0.74 of 2/h, passes it at step 900, and GD's loss
            # first rises (a spike) near step 1100 and oscillates from ~1400 on.
            lambda: cnn_mnist1d(num_samples=250),
            (0.03,),
            num_steps=1500,
            # The window from 1400 sees gradient flow leave GD; over 100 steps its sharpness
            # gains only ~0.025 x 2/h. Each window costs ~75 s CPU, so longer ones (or IGR)
            # would push the case past its ~6-minute share of the preset.
            window=100,
            flows=("gradient",),
            # Onset at step 500, GD's loss first rises at 676 (probed).
            gd_only=((0.035, 1500),),
        ),
    ]
    full = [
        dataclasses.replace(
            fast[0],
            make_problem=lambda: fc_digits(width=200, depth=2, num_samples=1797),
            hs=(0.025, 0.03, 0.035),
            num_steps=5000,
            every=50,
            windows_per_phase=4,
            flows=("gradient", "igr", "modified-2"),
            central_windows=2,
            gd_only=(),  # every h gets windows
        ),
        # The fast preset's CNN on four times the signals, a second h, denser checkpoints.
        dataclasses.replace(
            fast[2],
            make_problem=lambda: cnn_mnist1d(num_samples=1000),
            hs=(0.03, 0.035),
            num_steps=3000,
            every=50,
            window=200,
            windows_per_phase=4,
            flows=("gradient", "igr"),
            gd_only=(),
        ),
        dataclasses.replace(
            fast[1],
            make_problem=lambda: deep_linear(
                dim=20, depth=10, num_samples=1000, init_scale=DEEP_LINEAR_SCALE
            ),
            num_steps=2000,
            windows_per_phase=4,
            flows=("gradient", "igr", "modified-2", "principal"),
        ),
    ]
    return {"smoke": smoke, "fast": fast, "full": full}


def flow_factories(problem, step, k: int, num_iterations: int | None = None) -> dict:
    """The flows compared with GD, as `h -> (flow, complex_state)`."""
    return {
        "gradient": lambda h: (dl.GradientFlow(problem.loss), False),
        "igr": lambda h: (dl.IGRFlow(problem.loss, h), False),
        "modified-2": lambda h: (dl.ModifiedFlow(step, h, order=2), False),
        # Beyond h * lambda = 1 the principal flow's field is complex: it runs on a complex
        # state whose real part is compared with GD.
        "principal": lambda h: (
            dl.PrincipalFlow(problem.loss, h, method="lanczos", k=k, num_iterations=num_iterations),
            True,
        ),
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


def onset_step(checkpoints, h):
    """The first checkpoint whose sharpness reaches 2/h, or None."""
    for point in checkpoints:
        if point["sharpness"] >= 2 / h:
            return point["step"]
    return None


def oscillation_step(losses, onset):
    """The first step from `onset` on where GD's loss goes *up*, or None.

    Past 2/h the unstable component along the top eigenvector starts at
    round-off and grows by |1 - h lambda| per step; until it is large, GD
    still follows its stable path (and gradient flow with it). A rising loss is
    the first measured sign that GD oscillates.
    """
    if onset is None:
        return None
    rises = np.flatnonzero(np.diff(np.asarray(losses[onset:])) > 0)
    return onset + int(rises[0]) if rises.size else None


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


def _gd_window(problem, step, params, h, length):
    gd = dl.integrators.iterate(step, params, h, length, problem.data)
    return gd, jtu.tree_map(lambda x: x[-1], gd)


def measure_window(problem, step, make_flow, params, h, case, length=None):
    """One flow over one window from GD's iterate `params`; failures are data.

    Distances are relative to the parameter norm at the window's start (GD's own
    displacement grows at the edge, where it oscillates, so it is no yardstick).
    """
    length = case.window if length is None else length
    gd, gd_end = _gd_window(problem, step, params, h, length)
    norm = float(tree_norm(params))
    ts = h * jnp.arange(length + 1)
    predicted_loss = None
    try:
        flow, kind = make_flow(h)
        if kind == "central":
            states, _ = flow.integrate(params, length, problem.data, substeps=CENTRAL_SUBSTEPS)
            predicted_loss = flow.predicted_loss
        else:
            start = params
            if kind:
                start = jtu.tree_map(lambda x: x.astype(jnp.complex128), params)
            states = dl.solve(flow, start, ts[-1], ts=ts, args=problem.data, rtol=RTOL, atol=ATOL)
            states = jtu.tree_map(jnp.real, states)
        averaged = dl.analysis.distance_to_time_average(
            step,
            flow,
            params,
            h,
            length,
            problem.data,
            width=case.width,
            flow_states=states,
            predicted_loss=predicted_loss,
        )
    except (dl.DriftlabError, ValueError, eqx.EquinoxRuntimeError) as error:
        return {"failure": f"{type(error).__name__}: {str(error)[:160]}"}
    end = jtu.tree_map(lambda x: x[-1], states)
    distance = float(tree_norm(tree_sub(end, gd_end)))
    flow_loss = float(problem.loss(end, problem.data))
    gd_loss = float(problem.loss(gd_end, problem.data))
    return {
        "length": length,
        "distance": distance,
        "norm_distance": distance / norm,
        "relative_distance": distance / float(tree_norm(tree_sub(gd_end, params))),
        "average_distance": float(averaged.distance[-1]) / norm,
        "average_steps": averaged.steps.tolist(),
        "average_distances": (averaged.distance / norm).tolist(),
        "averaged_loss": averaged.averaged_loss.tolist(),
        "flow_losses": averaged.flow_loss.tolist(),
        "average_loss_error": float(averaged.loss_error[-1] / abs(averaged.averaged_loss[-1])),
        "flow_loss": flow_loss,
        "gd_loss": gd_loss,
        "loss_error": abs(flow_loss - gd_loss) / gd_loss,
        "flow_sharpness_ratio": h * dl.lambda_max(problem.loss, end, problem.data) / 2,
        "gd_sharpness_ratio": h * dl.lambda_max(problem.loss, gd_end, problem.data) / 2,
    }


def _values(windows, phase, key="average_distance"):
    return [w[key] for w in windows if w["phase"] == phase and key in w]


def _hovers(ratios) -> bool:
    deviation = np.abs(ratios - 1)
    return bool(np.mean(deviation <= HOVER_BAND) >= 0.8 and np.median(deviation) <= HOVER_BAND)


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
    midpoints = np.array([p["midpoint_sharpness"] * h / 2 for p in points])[steps >= onset]
    result |= {
        "progressive_sharpening": bool(ratios[0] < 1 - HOVER_BAND and after[0] >= 1),
        "fraction_within_band": float(np.mean(within)),
        "median_deviation": float(np.median(np.abs(after - 1))),
        "hovering": _hovers(after),
        "midpoint_fraction_within_band": float(np.mean(np.abs(midpoints - 1) <= HOVER_BAND)),
        "midpoint_median_deviation": float(np.median(np.abs(midpoints - 1))),
        "midpoint_hovering": _hovers(midpoints),
        "loss_at_onset": loss_at_onset,
        "loss_at_end": loss_at_end,
        "loss_still_falls": bool(loss_at_end < loss_at_onset),
    }
    gradient = run["windows"].get("gradient", [])
    before, later = _values(gradient, "before"), _values(gradient, "after")
    if before and later:
        factor = float(np.mean(later) / np.mean(before))
        flow_sharpness = _values(gradient, "after", "flow_sharpness_ratio")
        result |= {
            "gradient_flow_factor": factor,
            "gradient_flow_leaves": factor >= LEAVE_FACTOR,
            "gradient_flow_sharpness_after": float(np.min(flow_sharpness)),
            "gradient_flow_sharpens_past_2/h": bool(np.min(flow_sharpness) > 1 + HOVER_BAND),
        }
    return result


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
        progress(f"{case.name} h={h:g}: GD done, onset {onset}, loss rises from {oscillating}")
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


def overall_verdict(runs) -> dict:
    """Each finding holds on every run that reached EoS and where it was measured (and at
    least one such run exists); `measured_on` counts those runs per finding (gradient
    flow's factor needs a whole window before the onset, which a run may not have)."""
    reached = [r["verdict"] for r in runs if r["verdict"]["reached_eos"]]
    keys = [
        "progressive_sharpening",
        "hovering",
        "midpoint_hovering",
        "loss_still_falls",
        "gradient_flow_leaves",
        "gradient_flow_sharpens_past_2/h",
    ]
    measured = {key: [v[key] for v in reached if key in v] for key in keys}
    return {
        "runs_reaching_eos": f"{len(reached)}/{len(runs)}",
        **{key: bool(values) and all(values) for key, values in measured.items()},
        "measured_on": {key: f"{len(values)}/{len(reached)}" for key, values in measured.items()},
    }


def _mean_over(windows, phase, key):
    values = _values(windows, phase, key)
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
        markdown_table(
            ["finding", "holds", "measured on (runs at EoS)"],
            [
                [key, str(value), result["verdict"]["measured_on"].get(key, "-")]
                for key, value in result["verdict"].items()
                if key != "measured_on"
            ],
        ),
        "",
        "## Runs",
        "",
        "Sharpness ratios are h S / 2 at GD's iterates (every few steps) and at the midpoint "
        "of two consecutive iterates; 'loss rises' is the first step from the onset where "
        "GD's loss goes up (it oscillates). GF factor: gradient flow's distance to GD's "
        "time average at the end of windows once GD oscillates over the same before onset; "
        "GF sharpness: the smallest h S / 2 at gradient flow's endpoints of those windows.",
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
                run.get("oscillation_step") if run.get("oscillation_step") is not None else "-",
                f"{fmt(v.get('fraction_within_band'))} / "
                f"{fmt(v.get('midpoint_fraction_within_band'))}",
                f"{fmt(v.get('median_deviation'))} / {fmt(v.get('midpoint_median_deviation'))}",
                f"{fmt(v.get('loss_at_onset'))} -> {fmt(v.get('loss_at_end'))}",
                fmt(v.get("gradient_flow_factor")),
                fmt(v.get("gradient_flow_sharpness_after")),
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
                "loss rises",
                "within 10% of 2/h (iterates / midpoints)",
                "median abs(h S / 2 - 1) (iterates / midpoints)",
                "loss onset -> end",
                "GF factor",
                "GF sharpness",
                "final accuracy",
            ],
            rows,
        )
    )
    lines += ["", "## Flows over windows from GD's iterates", ""]
    lines.append(
        "Means over windows. Distances at the window's end, relative to the parameter norm "
        "at its start: to GD's iterate, and to GD's time-averaged iterate (Gaussian, sigma "
        "= `width` steps, compared where the average's window fits). h S / 2 at the flow's "
        "and at GD's endpoint. Loss errors relative: the flow's loss against GD's at the end, "
        "and against GD's time-averaged loss (the central flow's is its prediction "
        "L + <H, Sigma> / 2)."
    )
    lines.append("")
    rows = []
    for run in result["runs"]:
        for name, windows in run["windows"].items():
            for phase in ("before", "after"):
                inside = [w for w in windows if w["phase"] == phase]
                if not inside:
                    continue
                mean = lambda key: _mean_over(inside, phase, key)
                rows.append(
                    [
                        run["problem"],
                        run["h"],
                        name,
                        "before EoS" if phase == "before" else "at EoS",
                        f"{len(inside)} x {inside[0].get('length', run['window'])}",
                        fmt(mean("norm_distance")),
                        fmt(mean("average_distance")),
                        fmt(mean("flow_sharpness_ratio")),
                        fmt(mean("gd_sharpness_ratio")),
                        fmt(mean("loss_error")),
                        fmt(mean("average_loss_error")),
                        sum("failure" in w for w in inside),
                    ]
                )
    lines.append(
        markdown_table(
            [
                "problem",
                "h",
                "flow",
                "phase",
                "windows x steps",
                "to GD / norm",
                "to GD's average / norm",
                "h S / 2, flow",
                "h S / 2, GD",
                "loss error",
                "error vs averaged loss",
                "failed",
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
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
        for run in runs:
            steps = [p["step"] for p in run["checkpoints"]]
            line = axes[0].plot(steps, [p["sharpness"] for p in run["checkpoints"]], "o-", ms=2)
            color = line[0].get_color()
            axes[0].plot(
                steps, [p["midpoint_sharpness"] for p in run["checkpoints"]], "x:", color=color
            )
            axes[0].axhline(2 / run["h"], color=color, ls="--", lw=1)
            axes[0].plot([], [], color=color, label=f"h={run['h']:g}: GD (x: midpoints, -- 2/h)")
            ok = [w for w in run["windows"].get("gradient", []) if "flow_sharpness_ratio" in w]
            axes[0].plot(
                [w["start"] + w["length"] for w in ok],
                [2 * w["flow_sharpness_ratio"] / run["h"] for w in ok],
                "^",
                color=color,
                ms=7,
                label="gradient flow at its window's end" if ok else None,
            )
        axes[0].set(xlabel="step", ylabel="sharpness", title=f"{problem}: sharpness vs 2/h")
        axes[0].legend(fontsize=7)
        run = runs[-1]
        axes[1].semilogy(run["losses"], color="0.7", lw=0.6, label="GD")
        colors = {name: f"C{i}" for i, name in enumerate(run["windows"])}
        for name, windows in run["windows"].items():
            for i, w in enumerate(x for x in windows if "flow_losses" in x):
                at = [w["start"] + s for s in w["average_steps"]]
                axes[1].semilogy(at, w["averaged_loss"], "k", lw=1.5)
                axes[1].semilogy(
                    at, w["flow_losses"], color=colors[name], lw=1.2, label=None if i else name
                )
        axes[1].plot([], [], "k", lw=1.5, label="GD, time-averaged")
        for at, style in ((run["onset_step"], ":"), (run.get("oscillation_step"), "-.")):
            if at is not None:
                axes[1].axvline(at, color="gray", ls=style)
                axes[2].axvline(at, color="gray", ls=style)
        axes[1].set(xlabel="step", ylabel="loss", title=f"loss, h={run['h']:g}: GD and each flow")
        axes[1].legend(fontsize=7)
        for name, windows in run["windows"].items():
            for i, w in enumerate(x for x in windows if "average_distances" in x):
                axes[2].semilogy(
                    [w["start"] + s for s in w["average_steps"]],
                    w["average_distances"],
                    color=colors[name],
                    label=None if i else name,
                )
        axes[2].set(
            xlabel="step (: sharpness = 2/h, -. GD's loss first rises)",
            ylabel="|flow - GD's time average| / |w|",
            title=f"error per window (Gaussian average, sigma = {run['width']:g} steps)",
        )
        axes[2].legend(fontsize=7)
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
    result["figures"] = []
    write_json_atomic(result, os.path.join(output, "eos.json"))
    result["figures"] = figures(result, output)
    write_json_atomic(result, os.path.join(output, "eos.json"))
    write_text_atomic(markdown(result), os.path.join(output, "eos.md"))
    print(f"verdict: {result['verdict']}", file=sys.stderr)
    return result


def run(
    preset: str, output: str = RESULTS_DIR, argv=(), problems=None, flows=None, only=None
) -> dict:
    """The preset's cases (or those of `problems`); with `only` (a case's name), that case
    alone, its runs replacing its earlier ones in `output`'s eos.json."""
    if only is not None:
        if only not in [c.name for c in _presets()[preset]]:
            raise dl.InputError(
                f"`only` must name one of the {preset} preset's cases "
                f"{[c.name for c in _presets()[preset]]}, got {only!r}."
            )
        problems = [only]
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
    if only is not None:
        with open(os.path.join(output, "eos.json")) as file:
            result = replace_runs(json.load(file), result, [c.name for c in _presets()[preset]])
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smoke", "fast", "full"], default="fast")
    parser.add_argument("--output", default=RESULTS_DIR)
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
        run(args.preset, args.output, argv, args.problems, args.flows, args.case)


if __name__ == "__main__":
    main()
