"""Matplotlib figures of driftlab's measurements, written atomically."""

import os
import textwrap

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ._io import atomic_path


#: Characters per line of a figure's title at 11 pt, about the width of a 6-inch figure's
#: axes: a longer line runs to the figure's edge.
_TITLE_WIDTH = 48


def save_figure(figure, path: str) -> str:
    """Write `figure` to `path` through a temporary file, so a crash never leaves half a PNG."""
    suffix = os.path.splitext(path)[1] or ".png"
    try:
        with atomic_path(path, suffix) as temporary:
            figure.savefig(temporary, dpi=120, bbox_inches="tight", pad_inches=0.2)
    finally:
        plt.close(figure)
    return path


def orders_figure(estimates, title: str = ""):
    """The figure of `plot_orders`, not yet saved: `(figure, axes)`.

    The legend sits below the axes, where it can hide no point; a long title wraps.
    """
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for estimate in estimates:
        hs, errors, used = estimate.hs, estimate.errors, estimate.used
        label = (
            f"{estimate.kind}: {estimate.map_name} vs {estimate.flow_name} "
            f"(slope {estimate.slope:.2f}, expected {estimate.expected:g})"
        )
        (line,) = axes.loglog(hs[used], errors[used], "o-", label=label)
        if (~used).any():
            axes.loglog(hs[~used], errors[~used], "o", mfc="none", color=line.get_color())
        fitted = 2.0 ** (estimate.intercept + estimate.slope * np.log2(hs))
        axes.loglog(hs, fitted, ":", color=line.get_color(), lw=1)
    axes.set_xlabel("step size h")
    axes.set_ylabel("error")
    axes.set_title(textwrap.fill(title, _TITLE_WIDTH), fontsize=11)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return figure, axes


def plot_orders(estimates, path: str, title: str = "") -> str:
    """Error against `h` on log-log axes, one line per `OrderEstimate`, fitted slopes in the legend.

    Points left out of the fit (at the round-off floor) are drawn hollow.
    """
    figure, _ = orders_figure(estimates, title)
    return save_figure(figure, path)


def plot_drift(drifts, labels, path: str, title: str = "") -> str:
    """Distance between iterates and flow against time, one line per `Drift`."""
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for result, label in zip(drifts, labels):
        axes.semilogy(result.times[1:], result.errors[1:], label=label)
    axes.set_xlabel("time t = n h")
    axes.set_ylabel("distance to flow")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)
