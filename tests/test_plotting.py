"""The order figure keeps every point visible and its title inside the figure."""

import numpy as np

import driftlab as dl
from driftlab.plotting import orders_figure


DEMO_TITLE = "GD on a tanh MLP (digits): drift from gradient flow and IGR"


def _estimate(kind, flow, slope, error_at_largest):
    # Exact power laws through the demo's measured errors at h = 1/8 (its four lines).
    hs = np.geomspace(1 / 256, 1 / 8, 6)
    errors = error_at_largest * (hs / hs[-1]) ** slope
    intercept = np.log2(errors[-1]) - slope * np.log2(hs[-1])
    return dl.OrderEstimate(
        kind=kind,
        map_name="GradientDescent",
        flow_name=flow,
        hs=hs,
        errors=errors,
        floors=np.full(6, 4e-10),
        used=np.ones(6, bool),
        slope=float(slope),
        slope_stderr=0.0,
        intercept=float(intercept),
        expected=float(slope),
        stability_index=0.3,
    )


def test_the_legend_hides_no_point_and_the_title_stays_over_the_axes():
    estimates = [
        _estimate("local", "GradientFlow", 2, 7.2e-3),
        _estimate("global", "GradientFlow", 1, 1.1e-2),
        _estimate("local", "IGRFlow", 3, 1.3e-3),
        _estimate("global", "IGRFlow", 2, 1.4e-3),
    ]
    figure, axes = orders_figure(estimates, DEMO_TITLE)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    points = np.concatenate(
        [axes.transData.transform(line.get_xydata()) for line in axes.get_lines()]
    )
    inside = (
        (points[:, 0] >= legend.x0)
        & (points[:, 0] <= legend.x1)
        & (points[:, 1] >= legend.y0)
        & (points[:, 1] <= legend.y1)
    )
    assert not inside.any(), points[inside]
    title = axes.title.get_window_extent(renderer)
    frame = axes.get_window_extent(renderer)
    assert frame.x0 <= title.x0 and title.x1 <= frame.x1, (title, frame)
