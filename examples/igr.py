"""Implicit gradient regularisation (Barrett & Dherin 2021), on the MLP on digits.

Claims checked:
1. GD with a larger step reaches a given loss at a smaller gradient norm.
2. The IGR flow predicts GD's trajectory (loss and ||grad L||^2 over time)
   better than gradient flow does.
3. The explicit regulariser L + h/4 ||grad L||^2, trained with a small step,
   reproduces the large-step effect on the gradient norm.
"""

import os
import time

import matplotlib.pyplot as plt
import numpy as np

import driftlab as dl
from driftlab.flows import igr_loss
from driftlab.plotting import save_figure

from ._common import at_loss_levels, finish, loss_curves, parse_args, progress


NAME = "igr"


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    problem = dl.problems.mlp_digits(num_samples=128 if args.quick else 512)
    loss, data, params = problem.loss, problem.data, problem.params
    lam = dl.lambda_max(loss, params, data)
    h_small, h_large = 0.05, min(0.5, 1.6 / lam)
    t_end = 4.0 if args.quick else 40.0
    progress(
        f"lambda_max = {lam:.3f}; h_small = {h_small}, h_large = {h_large:.3f} "
        f"(h lambda = {h_large * lam:.2f})"
    )

    def run(step_loss, h):
        n = int(round(t_end / h))
        path = dl.iterate(dl.GradientDescent(step_loss), params, h, n, data)
        return np.arange(n + 1) * h, path

    progress("GD with the small and the large step, and GD on the explicit regulariser")
    t_small, path_small = run(loss, h_small)
    t_large, path_large = run(loss, h_large)
    t_reg, path_reg = run(igr_loss(loss, h_large), h_small)
    curves = {
        "GD small h": (t_small, *loss_curves(loss, path_small, data)),
        "GD large h": (t_large, *loss_curves(loss, path_large, data)),
        "GD small h on L + h_large/4 |g|^2": (
            t_reg,
            *loss_curves(loss, path_reg, data),
        ),
    }

    progress("gradient flow and IGR flow along the large-step run")
    flows = {"gradient flow": dl.GradientFlow(loss), "IGR flow": dl.IGRFlow(loss, h_large)}
    # Gradient flow on both steps' grids: the figure shows each run's loss minus gradient
    # flow's at the same time (the losses themselves differ by under 2%: indistinguishable).
    grid = np.union1d(t_small, t_large)
    for label, flow in flows.items():
        ts = grid if label == "gradient flow" else t_large
        path = dl.solve(flow, params, ts[-1], ts=ts, args=data, rtol=1e-9, atol=1e-9)
        curves[label] = (ts, *loss_curves(loss, path, data))
    gradient_flow_loss = curves["gradient flow"][1]
    on_large_grid = np.searchsorted(grid, t_large)
    curves["gradient flow"] = tuple(c[on_large_grid] for c in curves["gradient flow"])

    _, loss_large, grad_large = curves["GD large h"]
    prediction_errors = {
        label: {
            "loss": float(np.max(np.abs(curves[label][1] - loss_large))),
            "grad_norm_sq": float(np.max(np.abs(curves[label][2] - grad_large))),
        }
        for label in flows
    }
    levels = np.linspace(max(c[1][-1] for c in curves.values()) * 1.05, loss_large[0] * 0.9, 5)
    at_levels = {
        label: at_loss_levels(levels, curves[label][1], curves[label][2]).tolist()
        for label in ("GD small h", "GD large h", "GD small h on L + h_large/4 |g|^2")
    }
    small, large, regularised = (np.array(at_levels[k]) for k in at_levels)
    checks = {
        "GD with the larger step has the smaller ||grad L||^2 at every matched loss level": bool(
            np.all(large < small)
        ),
        "the IGR flow tracks GD's loss more closely than gradient flow": prediction_errors[
            "IGR flow"
        ]["loss"]
        < prediction_errors["gradient flow"]["loss"],
        "the IGR flow tracks GD's ||grad L||^2 more closely than gradient flow": prediction_errors[
            "IGR flow"
        ]["grad_norm_sq"]
        < prediction_errors["gradient flow"]["grad_norm_sq"],
        "the explicit regulariser at the small step lowers ||grad L||^2 like the large step": bool(
            np.all(regularised < small)
            and np.max(np.abs(regularised - large) / large) < 0.5 * np.max((small - large) / large)
        ),
    }

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, (t, values, _) in curves.items():
        difference = values - np.interp(t, grid, gradient_flow_loss)
        axes[0].plot(t, difference, "--" if "flow" in label else "-", label=label)
    for label in flows:
        t, values, squared = curves[label]
        axes[1].semilogy(t[1:], np.abs(values - loss_large)[1:], label=f"loss, {label}")
        axes[1].semilogy(
            t[1:], np.abs(squared - grad_large)[1:], ":", label=f"||grad L||^2, {label}"
        )
    for label in at_levels:
        relative = 100 * (np.array(at_levels[label]) - small) / small
        axes[2].plot(levels, relative, "o-", label=label)
    axes[0].set(
        xlabel="time t = n h",
        ylabel="loss - loss of gradient flow at time t",
        title="loss over time, relative to gradient flow",
    )
    axes[1].set(
        xlabel="time t = n h",
        ylabel="|flow - GD (large h)|",
        title="how well each flow predicts GD with the large step",
    )
    axes[2].set(
        xlabel="loss level",
        ylabel="||grad L||^2 vs GD small h (%)",
        title="gradient norm at matched loss",
    )
    axes[2].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(figure, os.path.join(args.output, "igr.png"))
    numbers = {
        "lambda_max": lam,
        "h_small": h_small,
        "h_large": h_large,
        "t_end": t_end,
        "prediction_errors_max_over_time": prediction_errors,
        "loss_levels": levels.tolist(),
        "grad_norm_sq_at_levels": at_levels,
    }
    print(
        "max |loss(flow) - loss(GD)| over time: "
        + ", ".join(f"{k}: {v['loss']:.2e}" for k, v in prediction_errors.items())
    )
    print(f"||grad L||^2 at loss levels {np.round(levels, 3).tolist()}:")
    for label, values in at_levels.items():
        print(f"  {label:>36}: {np.round(values, 5).tolist()}")
    finish(
        NAME,
        args,
        (
            "GD's implicit regulariser h/4 ||grad L||^2: larger steps follow paths of smaller "
            "gradient norm, the IGR flow predicts it, an explicit regulariser reproduces it"
        ),
        checks,
        numbers,
        start,
    )


if __name__ == "__main__":
    main()
