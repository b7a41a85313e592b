"""The edge-of-stability suite's report: the verdict and tables in Markdown, the figures, JSON."""

import os
import textwrap

import numpy as np

from driftlab._io import write_json_atomic

from .._output import fmt, markdown_table, write_text_atomic
from ._cases import PRESET_GUIDE
from ._measure import _values, overall_verdict


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
    print(summary(result), flush=True)
    return result


def summary(result) -> str:
    """The verdict in words: how many runs reached the edge, which findings hold there."""
    verdict = result["verdict"]
    reached, total = verdict["runs_reaching_eos"].split("/")
    lines = [f"{reached} of {total} runs reached the edge of stability (sharpness 2/h)."]
    if reached == "0":
        lines.append("No finding could be measured: each needs a run at the edge.")
        if result["preset"] == "smoke":
            lines.append(f"As expected: the smoke preset is {PRESET_GUIDE['smoke'][1]}.")
    else:
        findings = [key for key in verdict if key not in ("runs_reaching_eos", "measured_on")]
        measured = [k for k in findings if not verdict["measured_on"][k].startswith("0/")]
        holds = [k for k in measured if verdict[k]]
        fails = [k for k in measured if not verdict[k]]
        lines.append(f"Findings that hold on every run at the edge: {', '.join(holds) or 'none'}.")
        if fails:
            lines.append(f"Findings that fail on some run: {', '.join(fails)}.")
    lines.append("Tables and figures: eos.md in the output directory.")
    return "\n".join(textwrap.fill(line, 88) for line in lines)
