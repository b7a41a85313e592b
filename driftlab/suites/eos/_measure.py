"""The edge-of-stability suite's measurements: the onset, flows over windows, the verdicts.

A window solves a flow from GD's iterate for tens to hundreds of steps and compares it
with GD's iterate and GD's time average at the window's end (relative to the parameter
norm); the verdicts test Cohen et al. 2021's findings on one run's series.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
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
#: Euler substeps per GD step of the central flow (the authors' position-level scheme).
CENTRAL_SUBSTEPS = 4


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
