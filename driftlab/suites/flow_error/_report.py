"""The flow sweep's report: the verdict and the tables in Markdown, and the figures."""

import os

import numpy as np

import driftlab as dl

from .._output import fmt, markdown_table
from ._cases import FIT_MAX, GLOBAL_FIT_MAX, TRACKING_TOLERANCE


def write_figures(cases, output: str, tracked=None) -> list[str]:
    """Error-vs-h figures per case, drift figures, and the tracking figure of `tracked`
    (default: `cases`)."""
    from driftlab.plotting import plot_drift, plot_orders

    paths = []
    for case in cases:
        estimates = []
        for name, flow in case["flows"].items():
            result = flow["_fits"]["local"]
            expected = flow["expected"]["local"]
            if expected is None or not result["used"].any():
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
                    expected=float(expected),
                    stability_index=float("nan"),
                )
            )
        if estimates:
            stem = f"flow_error_orders_{case['problem']}_{case['optimiser']}.png"
            title = (
                f"{case['optimiser']} on {case['problem']}: local error "
                f"(slopes fitted for {case['scale']} <= {FIT_MAX:g})"
            )
            paths.append(plot_orders(estimates, os.path.join(output, stem), title))
        drifts = [d for d in case["drift"] if "_result" in d]
        if drifts:
            stem = f"flow_error_drift_{case['problem']}_{case['optimiser']}.png"
            title = (
                f"{case['optimiser']} on {case['problem']}: drift at "
                f"{case['scale']} = {drifts[0]['h_lambda']:g}"
            )
            paths.append(
                plot_drift(
                    [d["_result"] for d in drifts],
                    [d["flow"] for d in drifts],
                    os.path.join(output, stem),
                    title,
                )
            )
    tracked = cases if tracked is None else tracked
    paths.append(plot_tracking(tracked, os.path.join(output, "flow_error_tracking.png")))
    return paths


#: Where the tracking figure draws errors below this (round-off, or exactly zero).
_PLOT_FLOOR = 1e-17


def plot_tracking(cases, path: str) -> str:
    """Relative global error against each case's x; crosses where a flow failed."""
    import matplotlib.pyplot as plt

    from driftlab.plotting import save_figure

    columns = min(3, len(cases))
    rows = -(-len(cases) // columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(5.4 * columns, 4.2 * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax, case in zip(axes.flat, cases):
        for name, flow in case["flows"].items():
            scaled, relative, failed = [], [], []
            for record in flow["measurements"]:
                result = None if record["failure"] else record["global"]
                if result is None or "failure" in result:
                    failed.append(record["h_lambda"])
                else:
                    scaled.append(record["h_lambda"])
                    relative.append(max(result["relative_error"], _PLOT_FLOOR))
            label = f"{name} (complex state)" if flow.get("complex_state") else name
            (line,) = ax.loglog(scaled, relative, "o-", ms=3, label=label)
            if failed:
                ax.plot(failed, [10.0] * len(failed), "x", color=line.get_color(), ms=7)
        index = case["stability_index"]
        edge = [float(k) for k, v in index.items() if v is not None and np.isfinite(v) and v >= 2]
        if edge:
            ax.axvline(min(edge), color="k", lw=0.8, ls="--")
        ax.axhline(TRACKING_TOLERANCE, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{case['optimiser']} on {case['problem']}", fontsize=9)
        ax.set_xlabel(case["scale"])
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


def verdict_rows(result: dict) -> list[list]:
    """One line per flow: up to which x of its case's scale it tracks to the tolerance."""
    rows = []
    for case in result["cases"]:
        for name, flow in case["flows"].items():
            rows.append(
                [
                    case["problem"],
                    case["optimiser"],
                    name + (" (complex state)" if flow.get("complex_state") else ""),
                    case["scale"],
                    _tracks(flow),
                    _behaviour(flow),
                ]
            )
    return rows


def _tracks(flow) -> str:
    limit = flow["tracks_up_to"]
    if not limit:
        return "never"
    gaps = flow.get("does_not_exist_at") or []
    text = f"{limit:g}" + ("" if flow["stops_tracking"] else " (whole grid)")
    if gaps:
        text += f"; does not exist at {', '.join(f'{g:g}' for g in gaps)}"
    return text


def _behaviour(flow) -> str:
    fit = flow["fits"]["global"]
    if fit.get("at_floor"):
        return f"round-off: relative error <= {fmt(fit['max_relative_error'], 2)} on every point"
    expected = flow["expected"]["global"]
    text = f"global slope {_slope(fit)} (expected {expected if expected is not None else '-'})"
    if flow["stops_tracking"]:
        text += f"; then {flow['stops_tracking']}"
    return text


def markdown(result: dict, figures: list[str]) -> str:
    """The Markdown report: verdict, scales, fitted slopes and tracking limits, drift, notes."""
    lines = [
        f"# Flow approximation sweep (`{result['preset']}` preset)",
        "",
        f"Command: `{result['command']}`  ",
        f"Runtime: {result['seconds']:.0f} s wall clock, {result['cpu_seconds']:.0f} s CPU "
        f"(all threads) on {result['machine']['platform']} ({result['machine']['cpu_count']} "
        f"cores, load average {result['machine']['load_average'][0]:.1f} at the start; jax "
        f"{result['machine']['jax']}).  ",
        f"Default grid of x: {', '.join(f'{x:g}' for x in result['scaled_steps'])} (cases "
        "may set their own, below). Local slopes fitted for x <= "
        f"{FIT_MAX:g}, global slopes for x <= {GLOBAL_FIT_MAX:g}, on points at least 10x "
        "above the round-off / solver floor; a flow tracks while its global error is <= "
        f"{TRACKING_TOLERANCE:g} x |params|.",
        "",
        f"## Verdict: which flow tracks to {TRACKING_TOLERANCE:.0%} up to which step size",
        "",
        markdown_table(
            ["problem", "optimiser", "flow", "x", "tracks up to x", "how"],
            verdict_rows(result),
        ),
        "",
        "## Problems and step-size scales",
        "",
        markdown_table(
            [
                "problem",
                "optimiser",
                "hyperparameters (else the registry's)",
                "parameters",
                "x",
                "h at x = 1",
                "t (global)",
                "grid of x",
                "first x with index >= 2",
            ],
            [
                [
                    c["problem"],
                    c["optimiser"],
                    ", ".join(f"{k}={v:g}" for k, v in c["hyper"].items()) or "-",
                    c["num_parameters"],
                    c["scale"],
                    c["h_unit"],
                    c["t_end"],
                    ", ".join(f"{x:g}" for x in c["grid"]),
                    _edge(c),
                ]
                for c in result["cases"]
            ],
        ),
        "",
        "Scales: "
        + "; ".join(sorted({f"`{c['scale']}`: {c['scale_description']}" for c in result["cases"]}))
        + ".",
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
                    _expected(flow, "local"),
                    _slope(flow["fits"]["local"]),
                    _expected(flow, "global"),
                    _slope(flow["fits"]["global"]),
                    _tracks(flow),
                    flow["stops_tracking"] or "tracks on the whole grid",
                    _failure_summary(failures),
                    flow["expected"]["reason"],
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
                "tracks up to x",
                "stops because",
                "failures",
                "expected because",
            ],
            rows,
        )
    )
    lines += _path_spectrum_section(result)
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
                ["problem", "optimiser", "flow", "x", "final distance / ‖params‖", "failure"],
                drift_rows,
            ),
        ]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures]
    return "\n".join(lines) + "\n"


def _path_spectrum_section(result) -> list[str]:
    """Per grid point of a case with a principal flow: the Hessian along GD's path, and
    each flow's global error relative to |params| and to GD's displacement."""
    lines = []
    for case in result["cases"]:
        spectra = case.get("path_spectrum") or {}
        if not spectra:
            continue
        names = list(case["flows"])
        rows = []
        for x in case["grid"]:
            spectrum = spectra[str(x)]
            row = [
                x,
                spectrum["num_steps"],
                f"{spectrum['min_gap']:.3g} (h*lambda = {spectrum['nearest_h_lambda']:.3g} "
                f"at step {spectrum['at_step']:g})",
                f"{spectrum['resolution']:.2g}",
                spectrum["crossing"] or "none",
            ]
            for name in names:
                (record,) = [r for r in case["flows"][name]["measurements"] if r["h_lambda"] == x]
                result_ = None if record["failure"] else record["global"]
                if result_ is None or "failure" in result_:
                    row.append("not measured" if record["failure"] else "failed")
                    continue
                by_motion = result_["error"] / spectrum["gd_displacement"]
                row.append(f"{result_['relative_error']:.2g} ({by_motion:.2g})")
            rows.append(row)
        start = case.get("start")
        origin = (
            f"GD's iterate after {start['warm_up_steps']} steps at h*lambda_max = "
            f"{start['warm_up_step']:g}, moved by {start['kick']:g} x its norm along the top "
            "Hessian eigenvector"
            if start
            else "the problem's initial point"
        )
        lines += [
            "",
            f"## The Hessian along GD's path: {case['problem']} / {case['optimiser']}",
            "",
            f"Start: {origin}. The principal flow is solved only where no eigenvalue of "
            "the Hessian crosses 1/h along GD's path (sampled at every iterate and step "
            "midpoint; `resolution` is the largest change of a sorted h*lambda_i between "
            "samples). Errors: relative to |params| (in brackets: relative to GD's "
            "displacement |theta_n - theta_0|).",
            "",
            markdown_table(
                ["x", "steps", "min abs(1 - h*lambda_i)", "resolution", "crossing"] + names,
                rows,
            ),
        ]
    return lines


def _edge(case) -> str:
    edge = [float(k) for k, v in case["stability_index"].items() if v is not None and v >= 2]
    return f"{min(edge):g}" if edge else "beyond grid"


def _expected(flow, kind: str) -> str:
    expected = flow["expected"][kind]
    if expected is None:
        return "round-off"
    closed = flow["fits"][kind].get("closed_form_slope")
    if closed is None or not np.isfinite(closed):
        return f"{expected}"
    return f"{expected} (closed form on the fitted points: {closed:.2f})"


def _slope(fit_result) -> str:
    if fit_result.get("at_floor"):
        return f"round-off (<= {fmt(fit_result['max_relative_error'], 2)} relative)"
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
    return f"{len(failures)} (from x={first['h_lambda']:g}: {message})"
