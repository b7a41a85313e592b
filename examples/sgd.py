"""Implicit regularisation of SGD (Smith, Dherin, Barrett & De 2021), on the MLP on digits.

An epoch of SGD takes m minibatch steps of size h, with the m fixed batches in a
random order: flow time m h. Averaged over batch orders, SGD follows the SGD flow
of L + h/(4m) sum_k ||grad L_k||^2 = L + h/4 ||grad L||^2 + h/(4m) sum_k ||g_k - g||^2:
the IGR flow of full-batch GD with the same step (m steps per epoch) plus a
minibatch-gradient-variance term. Batch orders are drawn in antithetic pairs (a
random order per epoch and its reversal) to average the order-dependent part out
faster. Claims checked:
1. The order-averaged SGD iterates stay closer to the SGD flow than to gradient
   flow and to the IGR flow with step h (GD's flow on the same time scale).
2. Halving h divides the SGD flow's error by about 4 (second order), the IGR
   flow's and gradient flow's by about 2 (they miss an O(h) term).
3. The variance term is penalised: at a matched loss, SGD's iterates have a
   smaller minibatch-gradient variance than GD's with the same step.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

import driftlab as dl
from driftlab._tree import tree_vdot
from driftlab.flows import sgd_variance_regulariser
from driftlab.plotting import save_figure

from ._common import at_loss_levels, finish, parse_args, progress


NAME = "sgd"


def _distance(path, reference):
    """||path_n - reference_n|| over all parameters, per time (leading axis)."""
    leaves = zip(jax.tree_util.tree_leaves(path), jax.tree_util.tree_leaves(reference))
    return np.sqrt(
        sum(
            np.sum((np.asarray(a) - np.asarray(b)).reshape(a.shape[0], -1) ** 2, axis=1)
            for a, b in leaves
        )
    )


def _along(function, path):
    """`function(params)` at every point of a stacked trajectory."""
    return np.asarray(jax.lax.map(function, path))


def run_step(problem, batches, h, grid, num_orders, seed):
    """SGD over `num_orders` batch orders, GD, and the flows, at one step size.

    The orders come in pairs, a random order per epoch and its reversal: the order-dependent
    O(h^2)-per-epoch part of an epoch flips sign under reversal, so each pair averages it out
    exactly and the average over orders converges much faster than with independent orders.

    The flows are solved on the time `grid` (shared by all step sizes, so that each flow
    compiles once) and read every m h.
    """
    loss, params = problem.loss, problem.params
    full = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), batches)
    m = jax.tree_util.tree_leaves(batches)[0].shape[0]
    stride = int(round(m * h / grid[1]))
    times = grid[::stride]
    epochs = len(times) - 1
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(num_orders // 2):
        orders = np.stack([rng.permutation(m) for _ in range(epochs)])
        for sequence in (orders, orders[:, ::-1]):  # each random order and its reversal
            per_epoch = jax.tree_util.tree_map(lambda x: x[sequence], batches)
            runs.append(
                dl.iterate(dl.SGDEpoch(loss), params, h, epochs, per_epoch, args_per_step=True)
            )
    runs = jax.tree_util.tree_map(lambda *paths: jnp.stack(paths), *runs)
    average = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), runs)
    single = [jax.tree_util.tree_map(lambda x: x[r], runs) for r in range(num_orders)]
    gd = dl.iterate(dl.GradientDescent(loss), params, h, epochs * m, full)
    gd = jax.tree_util.tree_map(lambda x: x[::m], gd)

    flows = {
        "gradient flow": (dl.GradientFlow(loss), full),
        "IGR flow, step h": (dl.IGRFlow(loss, h), full),
        "IGR flow, step m h": (dl.IGRFlow(loss, m * h), full),
        "SGD flow": (dl.SGDFlow(loss, h), batches),
    }
    distances, flow_paths = {}, {}
    for label, (flow, data) in flows.items():
        progress(f"h = {h}: {label}")
        path = dl.solve(flow, params, grid[-1], ts=grid, args=data, rtol=1e-9, atol=1e-9)
        path = jax.tree_util.tree_map(lambda x: x[::stride], path)
        flow_paths[label] = path
        distances[label] = _distance(average, path)
    sgd_flow = flow_paths["SGD flow"]
    single_run = np.mean([_distance(run, sgd_flow) for run in single], axis=0)
    pairs = jax.tree_util.tree_map(lambda x: x.reshape(-1, 2, *x.shape[1:]).mean(1), runs)
    spread = np.mean(
        [
            _distance(jax.tree_util.tree_map(lambda x: x[i], pairs), average)
            for i in range(len(single) // 2)
        ],
        axis=0,
    )

    variance = lambda p: h * sgd_variance_regulariser(loss, p, batches)
    igr_term = lambda p: 0.25 * h * tree_vdot(*[jax.grad(loss)(p, full)] * 2)
    flat_runs = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), runs)
    shape = (num_orders, epochs + 1)
    curves = {
        "SGD": {
            "loss": _along(lambda p: loss(p, full), flat_runs).reshape(shape).mean(0),
            "variance": _along(variance, flat_runs).reshape(shape).mean(0),
            "igr": _along(igr_term, flat_runs).reshape(shape).mean(0),
        },
        "GD": {
            "loss": _along(lambda p: loss(p, full), gd),
            "variance": _along(variance, gd),
            "igr": _along(igr_term, gd),
        },
        "SGD flow": {
            "loss": _along(lambda p: loss(p, full), sgd_flow),
            "variance": _along(variance, sgd_flow),
        },
    }
    return {
        "times": times,
        "epochs": epochs,
        "distances": distances,
        "single_run": single_run,
        "noise": spread / np.sqrt(num_orders // 2),
        "curves": curves,
    }


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    num_samples, m = (128, 4) if args.quick else (256, 8)
    problem = dl.problems.mlp_digits(num_samples=num_samples)
    batches = problem.batches(m, seed=0)
    steps = (0.2, 0.1)
    t_end = 6.4 if args.quick else 32.0
    num_orders = 16 if args.quick else 64
    lam = dl.lambda_max(problem.loss, problem.params, problem.data)
    progress(
        f"{num_samples} digits in m = {m} batches; lambda_max = {lam:.3f}; h = {steps}; "
        f"t = {t_end}; {num_orders} random batch orders per step size"
    )
    grid = np.linspace(0.0, t_end, int(round(t_end / (m * min(steps)))) + 1)
    results = {
        h: run_step(problem, batches, h, grid, num_orders, seed=i) for i, h in enumerate(steps)
    }

    flow_labels = list(results[steps[0]]["distances"])
    max_distance = {
        h: {label: float(np.max(d)) for label, d in r["distances"].items()}
        for h, r in results.items()
    }
    ratio = {
        label: max_distance[steps[0]][label] / max_distance[steps[1]][label]
        for label in flow_labels
    }
    small = results[steps[1]]
    sgd_curves, gd_curves = small["curves"]["SGD"], small["curves"]["GD"]
    low = max(sgd_curves["loss"][-1], gd_curves["loss"][-1])
    levels = np.linspace(low * 1.05, sgd_curves["loss"][0] * 0.9, 5)
    variance_at = {
        run: at_loss_levels(levels, small["curves"][run]["loss"], small["curves"][run]["variance"])
        for run in ("SGD", "GD")
    }
    share = sgd_curves["variance"] / (sgd_curves["variance"] + sgd_curves["igr"])

    closer = lambda other: all(max_distance[h]["SGD flow"] < max_distance[h][other] for h in steps)
    checks = {
        "at both steps the averaged SGD iterates are closer to the SGD flow than to "
        "gradient flow": closer("gradient flow"),
        "at both steps the averaged SGD iterates are closer to the SGD flow than to "
        "the IGR flow with step h": closer("IGR flow, step h"),
        f"halving h divides the SGD flow's error by > 3 (x{ratio['SGD flow']:.2f}) and the "
        f"IGR flow's by < 3 (x{ratio['IGR flow, step h']:.2f})": bool(
            ratio["SGD flow"] > 3 and ratio["IGR flow, step h"] < 3
        ),
        "at every matched loss SGD's variance term is below GD's (same h)": bool(
            np.all(variance_at["SGD"] < variance_at["GD"])
        ),
    }

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for h, style in zip(steps, ("--", "-")):
        r = results[h]
        for i, label in enumerate(flow_labels):
            axes[0].semilogy(
                r["times"][1:],
                r["distances"][label][1:],
                style,
                color=f"C{i}",
                label=f"{label}, h = {h}",
            )
        axes[0].semilogy(r["times"][1:], r["noise"][1:], style, color="grey", lw=0.8)
    r = results[steps[1]]
    axes[0].semilogy(
        r["times"][1:],
        r["single_run"][1:],
        ":",
        color=f"C{flow_labels.index('SGD flow')}",
        label=f"one order (not averaged) vs SGD flow, h = {steps[1]}",
    )
    t = small["times"]
    axes[1].semilogy(t, sgd_curves["variance"], label="variance term along SGD")
    axes[1].semilogy(t, small["curves"]["SGD flow"]["variance"], "--", label="... along SGD flow")
    axes[1].semilogy(t, gd_curves["variance"], label="variance term along GD (same h)")
    axes[1].semilogy(t, sgd_curves["igr"], ":", label="IGR term h/4 ||grad L||^2 along SGD")
    relative = 100 * (variance_at["SGD"] - variance_at["GD"]) / variance_at["GD"]
    axes[2].plot(levels, relative, "o-")
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[0].set(
        xlabel="time t = epoch x m h",
        ylabel="|| mean over orders of SGD - flow ||",
        title="distance of order-averaged SGD to each flow",
    )
    axes[1].set(
        xlabel="time t = epoch x m h",
        ylabel="regulariser value",
        title=f"(h/4m) sum_k ||g_k - g||^2 along training, h = {steps[1]}",
    )
    axes[2].set(
        xlabel="loss level",
        ylabel="variance term, SGD vs GD (%)",
        title="SGD's variance term at matched loss",
    )
    axes[2].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i}", label=label) for i, label in enumerate(flow_labels)]
    handles += [
        Line2D([], [], color="grey", lw=0.8, label="sampling noise of the average"),
        Line2D([], [], color="C3", ls=":", label=f"one order, not averaged (h = {steps[1]})"),
        Line2D([], [], color="black", ls="--", label=f"h = {steps[0]}"),
        Line2D([], [], color="black", label=f"h = {steps[1]}"),
    ]
    axes[0].legend(
        handles=handles, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15)
    )
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    figure.tight_layout()
    save_figure(figure, os.path.join(args.output, "sgd.png"))

    numbers = {
        "num_samples": num_samples,
        "num_batches": m,
        "lambda_max": lam,
        "steps": list(steps),
        "t_end": t_end,
        "num_orders": num_orders,
        "max_distance_to_averaged_sgd": {str(h): v for h, v in max_distance.items()},
        "error_ratio_when_halving_h": ratio,
        "single_order_vs_sgd_flow_max": float(np.max(small["single_run"])),
        "sampling_noise_of_average_max": {
            str(h): float(np.max(r["noise"])) for h, r in results.items()
        },
        "variance_term_along_sgd": sgd_curves["variance"].tolist(),
        "igr_term_along_sgd": sgd_curves["igr"].tolist(),
        "variance_share_of_sgd_regulariser": [float(share[0]), float(share[-1])],
        "loss_levels": levels.tolist(),
        "variance_term_at_levels": {k: v.tolist() for k, v in variance_at.items()},
    }
    for h in steps:
        print(
            f"h = {h}: max distance of averaged SGD to "
            + ", ".join(f"{k}: {v:.3e}" for k, v in max_distance[h].items())
        )
    print("error ratio h -> h/2: " + ", ".join(f"{k}: {v:.2f}" for k, v in ratio.items()))
    print(f"variance term at loss levels {np.round(levels, 3).tolist()}:")
    for label, values in variance_at.items():
        print(f"  {label:>4}: {np.round(values, 6).tolist()}")
    print(f"variance share of the SGD regulariser: start {share[0]:.2f}, end {share[-1]:.2f}")
    claim = (
        "averaged over batch orders, SGD follows the SGD flow of L + h/(4m) sum_k ||grad L_k||^2 "
        "(GD's flow plus a minibatch-variance term) more closely than GD's flows"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
