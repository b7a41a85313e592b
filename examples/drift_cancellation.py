"""Drift cancellation: gradient descent that follows gradient flow at a large learning rate.

`driftlab.CorrectedField` builds the field g_h = g_0 + h g_1 + ... + h^p g_p that,
fed to gradient descent instead of -grad L, makes one GD step match the exact
gradient flow over time h to O(h^(p+2)) (for p = 1: the corrected loss
L - h/4 ||grad L||^2, IGR with the opposite sign). On the MLP on digits, at a
step with h * lambda_max = 1:

1. Plain GD visibly leaves the gradient-flow trajectory (distance, loss, gradient norm).
2. GD driven by the order-1 correction stays closer, the order-3 one 10x closer
   (distance, loss and gradient norm).
3. The order-1 correction is a gradient field, and its loss is L - h/4 ||grad L||^2.
"""

import os
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import driftlab as dl
from driftlab._tree import tree_vdot
from driftlab.plotting import save_figure

from ._common import finish, loss_curves, parse_args, progress


NAME = "drift_cancellation"


def _loss_and_gradient_norm(loss, path, data):
    values, squared = loss_curves(loss, path, data)
    return values, np.sqrt(squared)


def _distance(path, reference):
    """||path_n - reference_n|| over all parameters, per time."""
    return np.sqrt(
        sum(
            np.sum((np.asarray(a) - np.asarray(b)).reshape(a.shape[0], -1) ** 2, axis=1)
            for a, b in zip(jax.tree_util.tree_leaves(path), jax.tree_util.tree_leaves(reference))
        )
    )


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    problem = dl.problems.mlp_digits(num_samples=128 if args.quick else 512)
    loss, data, params = problem.loss, problem.data, problem.params
    lam = dl.lambda_max(loss, params, data)
    h = 1.0 / lam
    t_end = 6.0 if args.quick else 30.0
    orders = (1, 2) if args.quick else (1, 3)
    n = int(round(t_end / h))
    times = np.arange(n + 1) * h
    progress(f"lambda_max = {lam:.3f}; h = {h:.3f} (h lambda_max = 1); {n} steps")

    step = dl.GradientDescent(loss)
    progress("gradient flow (diffrax, tight tolerances)")
    flow_path = dl.solve(dl.GradientFlow(loss), params, times[-1], ts=times, args=data)
    paths = {"plain GD": dl.iterate(step, params, h, n, data)}
    for order in orders:
        progress(f"GD driven by the order-{order} corrected field")
        corrected = dl.CorrectedField(step, h, order)
        paths[f"GD + order-{order} correction"] = dl.iterate(
            corrected.driven_map(), params, h, n, data
        )
    flow_loss, flow_grad = _loss_and_gradient_norm(loss, flow_path, data)
    curves = {
        label: (*_loss_and_gradient_norm(loss, path, data), _distance(path, flow_path))
        for label, path in paths.items()
    }

    progress("gradient structure and corrected loss of the order-1 correction")
    first = dl.CorrectedField(step, h, 1)
    structure = dl.is_gradient_field(first, params, data, num_probes=2)
    reference = jax.tree_util.tree_map(lambda x: 0.5 * x, params)

    def closed(p):
        g = jax.grad(loss)(p, data)
        return loss(p, data) - 0.25 * h * tree_vdot(g, g)

    corrected_loss = float(first.modified_loss(params, data, reference=reference))
    closed_loss = float(closed(params) - closed(reference) + loss(reference, data))

    summary = {
        label: {
            "max_distance_to_gradient_flow": float(np.max(distance)),
            "final_distance_to_gradient_flow": float(distance[-1]),
            "max_loss_gap": float(np.max(np.abs(values - flow_loss))),
            "max_grad_norm_gap": float(np.max(np.abs(grad_norm - flow_grad))),
            "final_loss": float(values[-1]),
        }
        for label, (values, grad_norm, distance) in curves.items()
    }
    plain = summary["plain GD"]
    low, high = (summary[f"GD + order-{order} correction"] for order in orders)
    checks = {
        "plain GD visibly leaves gradient flow (max distance > 1% of ||theta_0||)": plain[
            "max_distance_to_gradient_flow"
        ]
        > 0.01 * float(dl._tree.tree_norm(params)),
        f"GD + order-{orders[0]} correction stays closer to gradient flow than plain GD": low[
            "max_distance_to_gradient_flow"
        ]
        < plain["max_distance_to_gradient_flow"],
        f"GD + order-{orders[1]} correction stays 10x closer than plain GD": high[
            "max_distance_to_gradient_flow"
        ]
        < 0.1 * plain["max_distance_to_gradient_flow"],
        f"GD + order-{orders[1]} correction tracks gradient flow's loss and gradient norm "
        "better than plain GD": all(
            high[key] < plain[key] for key in ("max_loss_gap", "max_grad_norm_gap")
        ),
        "g_0, g_1 are gradients; the loss is L - h/4 ||grad L||^2 (+ const) to 1e-10": (
            structure.coefficient_is_gradient == (True, True)
        )
        and abs(corrected_loss - closed_loss) < 1e-10,
    }

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(times, flow_loss, "k--", label="gradient flow")
    axes[1].semilogy(times, flow_grad, "k--", label="gradient flow")
    for label, (values, grad_norm, distance) in curves.items():
        axes[0].plot(times, values, label=label)
        axes[1].semilogy(times, grad_norm, label=label)
        axes[2].semilogy(times[1:], distance[1:], label=label)
    axes[0].set(xlabel="time t = n h", ylabel="loss", title="loss")
    axes[1].set(xlabel="time t = n h", ylabel="||grad L||", title="gradient norm")
    axes[2].set(
        xlabel="time t = n h",
        ylabel="||theta_n - theta_GF(n h)||",
        title="distance to gradient flow (h lambda_max = 1)",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(figure, os.path.join(args.output, "drift_cancellation.png"))

    numbers = {
        "lambda_max": lam,
        "h": h,
        "h_lambda_max": h * lam,
        "t_end": float(times[-1]),
        "num_steps": n,
        "orders": list(orders),
        "params_norm": float(dl._tree.tree_norm(params)),
        "summary": summary,
        "order1_relative_asymmetry": list(structure.coefficient_asymmetry),
        "order1_corrected_loss": corrected_loss,
        "order1_closed_form_loss": closed_loss,
    }
    for label, values in summary.items():
        print(
            f"{label:>26}: max distance to GF {values['max_distance_to_gradient_flow']:.3e}, "
            f"max |loss gap| {values['max_loss_gap']:.3e}, "
            f"max |grad-norm gap| {values['max_grad_norm_gap']:.3e}"
        )
    finish(
        NAME,
        args,
        (
            "feeding GD the drift-cancelling corrected field makes it follow gradient flow "
            "at a learning rate where plain GD does not"
        ),
        checks,
        numbers,
        start,
    )


if __name__ == "__main__":
    main()
