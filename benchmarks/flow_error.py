r"""How well each flow tracks each optimiser, at step sizes up to and beyond the edge of stability.

    python -m benchmarks.flow_error --preset fast    # < 5 minutes on 2 cores
    python -m benchmarks.flow_error --preset smoke   # < 1 minute (CI: tests/test_benchmarks.py)
    python -m benchmarks.flow_error --preset full    # every paired flow, orders 1..6, 16 steps

For every problem, optimiser and flow (registry names of `driftlab._registry`; the
automatic `ModifiedFlow` as `modified-p`) and every step size $h$ with
$h\lambda_{max}$ on the preset's grid (0.01 to 2.5; $\lambda_{max}$ of the loss's
Hessian at the initial parameters, by `driftlab.lambda_max`), it records:

- the stability index $\max|1-\mu|$ of the map's Jacobian (`driftlab.stability_index`;
  $h\lambda_{max}$ for gradient descent, 2 at the edge of stability);
- the local error (one step, `driftlab.local_error`, $O(h^{p+2})$ for an order-$p$ flow)
  and the global error at a fixed time (`driftlab.global_error`, $O(h^{p+1})$);
- failures, as data: a flow that does not exist at that $h$ (heavy-ball's slow
  manifold beyond $h\lambda < (1-\sqrt\beta)^2$, a principal flow that turns complex
  at $h\lambda > 1$, a solve that blows up) is recorded with its message.

Maps with auxiliary state start on the flow's slow manifold (`flow.slow_state`). The
fitted slopes use only the points with $h\lambda_{max} \le$ `FIT_MAX` whose error is
at least 10 times its round-off / solver floor. A flow "tracks" the optimiser at
$h$ when its relative global error is at most `TRACKING_TOLERANCE`; the table reports
the largest $h\lambda_{max}$ up to which every grid point tracks. Along one trajectory
per marked case, `driftlab.drift` gives the distance between iterates and flows.

Outputs (in `--output`, default `benchmarks/results/`): `flow_error.json` (every
measurement and `driftlab._io.machine_info()`), `flow_error.md` (tables) and figures:
`flow_error_orders_<problem>_<optimiser>.png` (local error vs h, fitted slopes),
`flow_error_tracking.png` (relative global error vs $h\lambda_{max}$) and
`flow_error_drift_<problem>_<optimiser>.png`.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from driftlab import _registry
from driftlab._io import machine_info, write_json_atomic
from driftlab.analysis._order import fit_slope

from ._common import command_line, markdown_table, Progress, RESULTS_DIR, write_text_atomic


#: Slopes are fitted on the points with h * lambda_max at most this (the asymptotic regime).
FIT_MAX = 0.5
#: A flow tracks the optimiser while its global error is at most this fraction of |params|.
TRACKING_TOLERANCE = 1e-2
#: Above this many parameters the dense principal flow (a Hessian eigendecomposition per
#: field evaluation) is skipped; `principal-lanczos` is its matrix-free counterpart.
DENSE_PRINCIPAL_LIMIT = 256
#: What a failed measurement raises: driftlab's own errors, and run-time checks inside a
#: flow (`eqx.error_if`, e.g. a principal flow at h * lambda = 1) surfacing from XLA.
FAILURES = (
    dl.MeasurementError,
    dl.InputError,
    eqx.EquinoxRuntimeError,
    jax.errors.JaxRuntimeError,
    FloatingPointError,
)

#: The flows (registry names) that model each optimiser (registry names). `modified-p`
#: (the automatic `ModifiedFlow`) applies to every optimiser. A registry flow named in
#: no entry is tried on every optimiser, so new flows show up in the `full` preset
#: without editing this file; where it does not apply, the failure is recorded.
PAIRS = {
    "gd": ("gradient", "igr", "principal", "principal-lanczos"),
    "sgd-epoch": ("gradient", "sgd", "exact-batch-sgd"),
    "heavy-ball": ("heavy-ball",),
    "nesterov": (),
    "adam": ("adam",),
    "rmsprop": ("rmsprop",),
    "simultaneous-gd": ("simultaneous-game",),
    "alternating-gd": ("alternating-game",),
}
#: Which optimisers each problem is studied with in the `full` preset.
PROBLEM_OPTIMISERS = {
    "quadratic": ("gd", "heavy-ball", "nesterov", "adam", "rmsprop"),
    "logistic": ("gd", "sgd-epoch", "heavy-ball", "adam"),
    "mlp": ("gd", "sgd-epoch", "heavy-ball", "adam"),
    "game": ("simultaneous-gd", "alternating-gd"),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem and optimiser, and the flows to compare with it.

    `flows=None` means every registry flow paired with the optimiser (`paired_flows`);
    `orders` are the orders of the automatic `modified` flow. `drift` names the flows
    (labels such as `"igr"`, `"modified-2"`) followed along a trajectory; `True`: all.
    """

    problem: str
    optimiser: str
    flows: tuple[str, ...] | None = None
    orders: tuple[int, ...] = ()
    problem_options: dict = dataclasses.field(default_factory=dict)
    hyper: dict = dataclasses.field(default_factory=dict)
    drift: bool | tuple[str, ...] = False
    label: str | None = None

    @property
    def optimiser_label(self) -> str:
        """How tables and figure names call the optimiser: `label`, else its registry name."""
        return self.label or self.optimiser


@dataclasses.dataclass(frozen=True)
class Preset:
    """The cases, the grid of h * lambda_max, and the times global errors and drift use.

    Global errors are taken at `horizon / lambda_max` times the map's duration per unit
    step (an SGD epoch of m batches lasts m h); drift over `drift_steps` steps at
    `drift_scaled_step` = h * lambda_max.
    """

    cases: tuple[Case, ...]
    scaled_steps: tuple[float, ...]
    horizon: float = 5.0
    drift_scaled_step: float = 0.5
    drift_steps: int = 40


def _full_cases() -> tuple[Case, ...]:
    cases = []
    for problem, optimisers in PROBLEM_OPTIMISERS.items():
        for optimiser in optimisers:
            affordable = 6 if problem in ("quadratic", "game") else 4
            cases.append(
                Case(problem, optimiser, orders=tuple(range(1, affordable + 1)), drift=True)
            )
    return tuple(cases)


PRESETS = {
    "smoke": Preset(
        cases=(
            Case("quadratic", "gd", ("gradient", "igr"), orders=(2,), drift=("gradient", "igr")),
        ),
        scaled_steps=(0.01, 0.03, 0.1, 0.3, 1.0, 2.5),
        drift_steps=20,
    ),
    "fast": Preset(
        cases=(
            Case(
                "quadratic",
                "gd",
                ("gradient", "igr", "principal"),
                (1, 2, 3, 4, 5, 6),
                drift=("gradient", "igr", "modified-2", "modified-4"),
            ),
            Case("quadratic", "heavy-ball", ("heavy-ball",), (1, 2)),
            Case("quadratic", "adam", ("adam",), (1,)),
            # optax's b2 = 0.999 (above) puts Adam's asymptotic regime below the grid; with a
            # shorter memory and eps inside the square root (a smooth map) the grid reaches it.
            Case(
                "mlp",
                "adam",
                ("adam",),
                (1,),
                hyper={"b1": 0.5, "b2": 0.7, "eps": 1e-2, "eps_inside_sqrt": 1.0},
                label="adam-b2-0.7",
            ),
            Case("logistic", "sgd-epoch", ("gradient", "sgd", "exact-batch-sgd"), (1,)),
            Case("mlp", "gd", ("gradient", "igr"), (2,), drift=("gradient", "igr")),
            Case("game", "simultaneous-gd", ("simultaneous-game",), (1, 3)),
            Case(
                "game",
                "alternating-gd",
                ("alternating-game",),
                (1, 3),
                drift=("alternating-game", "modified-3"),
            ),
        ),
        scaled_steps=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5),
    ),
    "full": Preset(
        cases=_full_cases(),
        scaled_steps=tuple(np.round(np.geomspace(0.01, 2.5, 16), 4)),
        drift_steps=100,
    ),
}


def paired_flows(optimiser: str) -> tuple[str, ...]:
    """Registry flows that model `optimiser`, plus registry flows no `PAIRS` entry names."""
    named = {name for names in PAIRS.values() for name in names} | {"modified"}
    unpaired = tuple(name for name in _registry.FLOWS if name not in named)
    return PAIRS.get(optimiser, ()) + unpaired


def _size(tree) -> int:
    return sum(np.size(leaf) for leaf in jtu.tree_leaves(tree))


def flow_factories(case: Case, problem, step, notes: list) -> dict[str, Callable]:
    """`{label: h -> flow}` for the case's flows; what cannot run is skipped with a note."""
    factories = {}
    names = case.flows if case.flows is not None else paired_flows(case.optimiser)
    for name in names:
        where = f"{case.problem}/{case.optimiser_label}"
        if name not in _registry.FLOWS:
            notes.append(f"{where}: flow {name!r} is not in the registry yet; skipped.")
            continue
        if name == "principal" and _size(problem.params) > DENSE_PRINCIPAL_LIMIT:
            notes.append(
                f"{where}: dense 'principal' skipped ({_size(problem.params)} parameters > "
                f"{DENSE_PRINCIPAL_LIMIT}: one Hessian eigendecomposition per field "
                "evaluation); 'principal-lanczos' is the matrix-free flow."
            )
            continue
        make = _registry.FLOWS[name]
        factories[name] = lambda h, make=make: make(problem, step, h, 1)
    if case.orders and "modified" not in _registry.FLOWS:
        notes.append(
            f"{case.problem}/{case.optimiser_label}: 'modified' is not in the registry yet."
        )
    elif case.orders:
        make = _registry.FLOWS["modified"]
        for order in case.orders:
            factories[f"modified-{order}"] = lambda h, order=order: make(problem, step, h, order)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return factories


def _start(flow, step, problem, y_init, args):
    """The map's state to start from: on the flow's slow manifold when it has one."""
    slow_state = getattr(flow, "slow_state", None)
    if slow_state is None or step.parameters(y_init) is y_init:
        return y_init
    return slow_state(problem.params, args)


def _short(error: BaseException) -> str:
    message = str(error).strip().split("\n")[0]
    return f"{type(error).__name__}: {message[:300]}"


def _as_record(measurement) -> dict:
    return {
        "error": measurement.error,
        "relative_error": measurement.error / measurement.scale,
        "floor": measurement.floor,
        "at_floor": measurement.at_floor,
        "num_steps": measurement.num_steps,
        "t": measurement.t,
    }


def measure(step, make_flow, problem, y_init, h, t_end, args) -> dict:
    """Local and global error of one flow at one `h`; failures and warnings are recorded."""
    record = {"local": None, "global": None, "failure": None, "warnings": []}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            flow = make_flow(h)
            y0 = _start(flow, step, problem, y_init, args)
            record["order"] = int(flow.order)
        except (*FAILURES, AttributeError, TypeError, ValueError) as error:
            # A flow that does not apply to this map (or this h) is recorded, not raised.
            record["failure"] = _short(error)
        else:
            for kind in ("local", "global"):
                try:
                    if kind == "local":
                        result = dl.local_error(step, flow, y0, h, args)
                    else:
                        result = dl.global_error(step, flow, y0, h, t_end, args)
                    record[kind] = _as_record(result)
                except FAILURES as error:
                    record[kind] = {"failure": _short(error)}
    messages = {f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught}
    record["warnings"] = sorted(messages)
    record["seconds"] = time.perf_counter() - start
    return record


def _status(record, kind) -> str:
    if record["failure"]:
        return "failed"
    result = record[kind]
    return "failed" if "failure" in result else f"{result['error']:.3g}"


def fit(records, kind: str) -> dict:
    """The log-log slope of `kind` errors on the usable points of one flow's sweep."""
    hs, errors, floors, scaled = [], [], [], []
    for record in records:
        result = None if record["failure"] else record[kind]
        ok = result is not None and "failure" not in result
        hs.append(record["h"])
        scaled.append(record["h_lambda"])
        errors.append(result["error"] if ok else np.nan)
        floors.append(result["floor"] if ok else np.nan)
    hs, errors, floors, scaled = map(np.asarray, (hs, errors, floors, scaled))
    with np.errstate(invalid="ignore"):
        used = np.isfinite(errors) & (errors >= 10 * floors) & (scaled <= FIT_MAX)
    slope = stderr = intercept = np.nan
    if used.sum() >= 3 and hs[used].max() / hs[used].min() >= 2:
        slope, stderr, intercept = fit_slope(hs, errors, used)
    return {
        "kind": kind,
        "hs": hs,
        "errors": errors,
        "floors": floors,
        "used": used,
        "slope": slope,
        "slope_stderr": stderr,
        "intercept": intercept,
        "num_points": int(used.sum()),
    }


def tracking_limit(records) -> tuple[float, str | None]:
    """The largest h * lambda_max up to which every point tracks, and why the next one fails."""
    limit, reason = 0.0, None
    for record in records:
        result = None if record["failure"] else record["global"]
        if result is None or "failure" in result:
            reason = f"fails at h*lambda={record['h_lambda']:g}"
            break
        if not result["relative_error"] <= TRACKING_TOLERANCE:
            reason = f"relative error {result['relative_error']:.2g} at {record['h_lambda']:g}"
            break
        limit = record["h_lambda"]
    return limit, reason


def run_case(case: Case, preset: Preset, progress: Progress, notes: list) -> dict:
    """Every measurement of one case: lambda_max, stability indices, errors, fits, drift."""
    problem = _registry.lookup(_registry.PROBLEMS, "problem", case.problem)(**case.problem_options)
    step, y_init, args = _registry.lookup(_registry.OPTIMISERS, "optimiser", case.optimiser)(
        problem, case.hyper
    )
    curvature = dl.lambda_max(problem.loss, problem.params, problem.data)
    t_end = preset.horizon * float(step.duration(1.0 / curvature, args))
    label = f"{case.problem}/{case.optimiser_label}"
    progress(f"{label}: lambda_max = {curvature:.4g}, global errors at t = {t_end:.4g}")
    stability = {}
    for scaled in preset.scaled_steps:
        try:
            stability[scaled] = dl.stability_index(step, y_init, scaled / curvature, args)
        except FAILURES as error:
            stability[scaled] = np.nan
            notes.append(f"{label}: stability index at h*lambda={scaled:g} failed: {error}")
    case_notes = []
    factories = flow_factories(case, problem, step, case_notes)
    notes.extend(case_notes)
    flows = {}
    for name, make_flow in factories.items():
        records = []
        for scaled in preset.scaled_steps:
            h = scaled / curvature
            record = {"h": h, "h_lambda": scaled, "stability_index": stability[scaled]}
            record |= measure(step, make_flow, problem, y_init, h, t_end, args)
            records.append(record)
            progress(
                f"{label} {name} h*lambda={scaled:g} (index {stability[scaled]:.3g}): "
                f"local {_status(record, 'local')}, global {_status(record, 'global')}"
                f" ({record['seconds']:.1f}s)"
            )
        fits = {kind: fit(records, kind) for kind in ("local", "global")}
        order = next((r["order"] for r in records if "order" in r), None)
        limit, reason = tracking_limit(records)
        flows[name] = {
            "order": order,
            "expected": {
                "local": None if order is None else order + 2,
                "global": None if order is None else order + 1,
            },
            "measurements": records,
            "fits": {kind: _public_fit(result) for kind, result in fits.items()},
            "tracks_up_to": limit,
            "stops_tracking": reason,
            "_fits": fits,
        }
    drift = run_drift(case, preset, problem, step, y_init, args, curvature, factories, progress)
    return {
        "problem": case.problem,
        "optimiser": case.optimiser_label,
        "hyper": case.hyper,
        "num_parameters": _size(problem.params),
        "lambda_max": curvature,
        "t_end": t_end,
        "stability_index": {str(k): v for k, v in stability.items()},
        "flows": flows,
        "drift": drift,
    }


def _public_fit(result) -> dict:
    return {
        "slope": result["slope"],
        "slope_stderr": result["slope_stderr"],
        "intercept": result["intercept"],
        "num_points": result["num_points"],
        "used": result["used"],
    }


def run_drift(case, preset, problem, step, y_init, args, curvature, factories, progress):
    """`driftlab.drift` of each flow along one trajectory at `preset.drift_scaled_step`."""
    if not case.drift:
        return []
    h = preset.drift_scaled_step / curvature
    results = []
    for name, make_flow in factories.items():
        if case.drift is not True and name not in case.drift:
            continue
        entry = {"flow": name, "h": h, "h_lambda": preset.drift_scaled_step}
        start = time.perf_counter()
        try:
            flow = make_flow(h)
            y0 = _start(flow, step, problem, y_init, args)
            result = dl.drift(step, flow, y0, h, preset.drift_steps, args)
            entry |= {
                "times": result.times,
                "errors": result.errors,
                "relative_final": float(result.errors[-1] / result.map_norms[0]),
                "_result": result,
            }
            status = f"final distance {result.errors[-1]:.3g}"
        except FAILURES as error:
            entry["failure"] = _short(error)
            status = "failed"
        progress(
            f"{case.problem}/{case.optimiser_label} drift of {name} over "
            f"{preset.drift_steps} steps: {status} ({time.perf_counter() - start:.1f}s)"
        )
        results.append(entry)
    return results


def _strip_private(value):
    """The JSON view of a result: no `_`-prefixed plotting objects, NaN as `null`."""
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list | tuple):
        return [_strip_private(v) for v in value]
    if isinstance(value, np.ndarray):
        return _strip_private(value.tolist())
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def write_figures(cases, output: str) -> list[str]:
    """Error-vs-h figures per case, the tracking figure, and drift figures."""
    from driftlab.plotting import plot_drift, plot_orders

    paths = []
    for case in cases:
        estimates = []
        for name, flow in case["flows"].items():
            result = flow["_fits"]["local"]
            if flow["order"] is None or not np.isfinite(result["errors"]).any():
                continue
            estimates.append(
                dl.OrderEstimate(
                    kind="local",
                    map_name=case["optimiser"],
                    flow_name=name,
                    hs=result["hs"],
                    errors=result["errors"],
                    floors=result["floors"],
                    used=result["used"],
                    slope=result["slope"],
                    slope_stderr=result["slope_stderr"],
                    intercept=result["intercept"],
                    expected=float(flow["expected"]["local"]),
                    stability_index=float("nan"),
                )
            )
        if estimates:
            stem = f"flow_error_orders_{case['problem']}_{case['optimiser']}.png"
            title = (
                f"{case['optimiser']} on {case['problem']}: local error "
                f"(slopes fitted for h*lambda_max <= {FIT_MAX:g})"
            )
            paths.append(plot_orders(estimates, os.path.join(output, stem), title))
        drifts = [d for d in case["drift"] if "_result" in d]
        if drifts:
            stem = f"flow_error_drift_{case['problem']}_{case['optimiser']}.png"
            title = (
                f"{case['optimiser']} on {case['problem']}: drift at "
                f"h*lambda_max = {drifts[0]['h_lambda']:g}"
            )
            paths.append(
                plot_drift(
                    [d["_result"] for d in drifts],
                    [d["flow"] for d in drifts],
                    os.path.join(output, stem),
                    title,
                )
            )
    paths.append(plot_tracking(cases, os.path.join(output, "flow_error_tracking.png")))
    return paths


def plot_tracking(cases, path: str) -> str:
    """Relative global error against h * lambda_max per case; crosses where a flow failed."""
    import matplotlib.pyplot as plt

    from driftlab.plotting import save_figure

    columns = min(3, len(cases))
    rows = -(-len(cases) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        for name, flow in case["flows"].items():
            scaled, relative, failed = [], [], []
            for record in flow["measurements"]:
                result = None if record["failure"] else record["global"]
                if result is None or "failure" in result:
                    failed.append(record["h_lambda"])
                else:
                    scaled.append(record["h_lambda"])
                    relative.append(max(result["relative_error"], 1e-17))
            (line,) = ax.loglog(scaled, relative, "o-", ms=3, label=name)
            if failed:
                ax.plot(failed, [10.0] * len(failed), "x", color=line.get_color(), ms=7)
        index = case["stability_index"]
        edge = [float(k) for k, v in index.items() if v is not None and np.isfinite(v) and v >= 2]
        if edge:
            ax.axvline(min(edge), color="k", lw=0.8, ls="--")
        ax.axhline(TRACKING_TOLERANCE, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{case['optimiser']} on {case['problem']}", fontsize=9)
        ax.set_xlabel("h * lambda_max")
        ax.set_ylabel("relative global error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(cases) :]:
        ax.set_visible(False)
    figure.suptitle(
        "Where each flow stops tracking: global error at fixed time (x: flow failed, "
        f"dotted: {TRACKING_TOLERANCE:g}, dashed: stability index >= 2)",
        fontsize=10,
    )
    return save_figure(figure, path)


def markdown(result: dict, figures: list[str]) -> str:
    """The Markdown report: curvature, fitted slopes and tracking limits, drift, notes."""
    lines = [
        f"# Flow approximation sweep (`{result['preset']}` preset)",
        "",
        f"Command: `{result['command']}`  ",
        f"Runtime: {result['seconds']:.0f} s wall clock, {result['cpu_seconds']:.0f} s CPU "
        f"(all threads) on {result['machine']['platform']} ({result['machine']['cpu_count']} "
        f"cores, load average {result['machine']['load_average'][0]:.1f} at the start; jax "
        f"{result['machine']['jax']}).  ",
        f"Grid of h * lambda_max: {', '.join(f'{x:g}' for x in result['scaled_steps'])}. "
        f"Slopes fitted for h * lambda_max <= {FIT_MAX:g} on points at least 10x above the "
        f"round-off / solver floor; a flow tracks while its global error is <= "
        f"{TRACKING_TOLERANCE:g} x |params|.",
        "",
        "## Problems",
        "",
        markdown_table(
            [
                "problem",
                "optimiser",
                "hyperparameters (else the registry's)",
                "parameters",
                "lambda_max",
                "t (global)",
                "first h*lambda with index >= 2",
            ],
            [
                [
                    c["problem"],
                    c["optimiser"],
                    ", ".join(f"{k}={v:g}" for k, v in c["hyper"].items()) or "-",
                    c["num_parameters"],
                    c["lambda_max"],
                    c["t_end"],
                    _edge(c),
                ]
                for c in result["cases"]
            ],
        ),
        "",
        "## Fitted orders and where each flow stops tracking",
        "",
    ]
    rows = []
    for case in result["cases"]:
        for name, flow in case["flows"].items():
            failures = [
                r
                for r in flow["measurements"]
                if r["failure"] or any("failure" in (r[k] or {}) for k in ("local", "global"))
            ]
            rows.append(
                [
                    case["problem"],
                    case["optimiser"],
                    name,
                    flow["expected"]["local"],
                    _slope(flow["fits"]["local"]),
                    flow["expected"]["global"],
                    _slope(flow["fits"]["global"]),
                    flow["tracks_up_to"] if flow["tracks_up_to"] else "never",
                    flow["stops_tracking"] or "tracks on the whole grid",
                    _failure_summary(failures),
                ]
            )
    lines.append(
        markdown_table(
            [
                "problem",
                "optimiser",
                "flow",
                "local expected",
                "local measured",
                "global expected",
                "global measured",
                "tracks up to h*lambda",
                "stops because",
                "failures",
            ],
            rows,
        )
    )
    drift_rows = [
        [c["problem"], c["optimiser"], d["flow"], d["h_lambda"], d.get("relative_final")]
        + [d.get("failure", "")]
        for c in result["cases"]
        for d in c["drift"]
    ]
    if drift_rows:
        lines += [
            "",
            f"## Drift along a trajectory ({result['drift_steps']} steps)",
            "",
            markdown_table(
                [
                    "problem",
                    "optimiser",
                    "flow",
                    "h*lambda",
                    "final distance / ‖params‖",
                    "failure",
                ],
                drift_rows,
            ),
        ]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures]
    return "\n".join(lines) + "\n"


def _edge(case) -> str:
    edge = [float(k) for k, v in case["stability_index"].items() if v is not None and v >= 2]
    return f"{min(edge):g}" if edge else "beyond grid"


def _slope(fit_result) -> str:
    if fit_result["slope"] is None or not np.isfinite(fit_result["slope"]):
        return f"no fit ({fit_result['num_points']} usable points)"
    return f"{fit_result['slope']:.2f} ± {fit_result['slope_stderr']:.2f}"


def _failure_summary(failures) -> str:
    if not failures:
        return ""
    first = failures[0]
    message = first["failure"] or next(
        first[k]["failure"] for k in ("local", "global") if "failure" in (first[k] or {})
    )
    message = message.replace("|", "/")[:120]
    return f"{len(failures)} (from h*lambda={first['h_lambda']:g}: {message})"


def run(preset_name: str, output: str = RESULTS_DIR, *, figures: bool = True, argv=()) -> dict:
    """Run a preset and write `flow_error.json`, `flow_error.md` and the figures to `output`."""
    preset = PRESETS[preset_name]
    start, cpu_start = time.perf_counter(), time.process_time()
    progress = Progress()
    notes: list[str] = []
    cases = [run_case(case, preset, progress, notes) for case in preset.cases]
    result = {
        "preset": preset_name,
        "command": command_line("benchmarks.flow_error", argv or ["--preset", preset_name]),
        "machine": machine_info(),
        "scaled_steps": list(preset.scaled_steps),
        "fit_max": FIT_MAX,
        "tracking_tolerance": TRACKING_TOLERANCE,
        "horizon": preset.horizon,
        "drift_steps": preset.drift_steps,
        "notes": notes,
        "cases": cases,
    }
    paths = write_figures(cases, output) if figures else []
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    result["figures"] = [os.path.basename(p) for p in paths]
    public = _strip_private(result)
    json_path = write_json_atomic(public, os.path.join(output, "flow_error.json"))
    md_path = write_text_atomic(markdown(public, paths), os.path.join(output, "flow_error.md"))
    print(f"wrote {json_path}, {md_path} and {len(paths)} figures in {result['seconds']:.0f}s")
    return public


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flow_error", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--output", default=RESULTS_DIR, help="directory for JSON, MD and PNGs")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite flow_error.md from flow_error.json"
    )
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.output, "flow_error.json")) as file:
            result = json.load(file)
        text = markdown(result, result["figures"])
        print(write_text_atomic(text, os.path.join(args.output, "flow_error.md")))
        return 0
    run(args.preset, args.output, figures=not args.no_figures, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
