"""Your training recipe: AdamW with linear warmup and cosine decay has modified flows.

The recipe of the field, stated in continuous time tau = n h (step n uses the rate
h sigma(n h); the warmup lasts tau_w, the cosine ends at T), is an autonomous map on
(theta, tau), so `driftlab.ModifiedFlow` expands it like any other: the flows below are
the automatic modified flows of optax's AdamW under `driftlab.Scheduled`, of orders
0, 1 and 2 (b1 = 0.5, b2 = 0.7, eps = 1e-2 outside the root, eps_root = 1e-4 inside it,
weight decay 1e-2; bias correction held burned in, and the iterates started on the
flow's slow manifold at tau = 0).

Claims checked, on the MLP on digits over the whole schedule:
1. before the warmup's kink the order-2 flow tracks AdamW at least 3x closer than the
   order-1 flow, and the order-1 flow at least 3x closer than the order-0 flow;
2. over the whole schedule the order-1 flow stays at least 3x closer than order 0;
3. after the kink the order-2 flow's lead over order 1 shrinks below 3x: one step
   across a kink has a local error c h^2 whatever the flow's order (here
   c = |sigma'_+ - sigma'_-| delta (h - delta) / (2 h^2) times the update, delta the
   kink's offset in its step), which the order-2 flow carries from then on. It caps
   the global order at 2 only once it dominates the flow's own O(h^3) error, i.e. for
   h below the step sizes used here (the benchmark measures 2.94 across the kink).
"""

import os
import time
import warnings

import matplotlib.pyplot as plt
import optax

import driftlab as dl
from driftlab.plotting import save_figure

from ._common import finish, parse_args, progress


NAME = "training_recipe"
B1, B2, EPS, EPS_ROOT, DECAY = 0.5, 0.7, 1e-2, 1e-4, 1e-2
ORDERS = (0, 1, 2)


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    problem = dl.problems.mlp_digits(hidden=8, num_samples=128)
    loss, data, params = problem.loss, problem.data, problem.params
    horizon, h = 1.0, 0.005 if args.quick else 0.0025
    warmup = 0.2237 * horizon  # inside a step for every h used here, not on a step boundary
    schedule = dl.WarmupCosineSchedule(warmup=warmup, horizon=horizon, init=0.1)
    adamw = dl.OptaxStepMap(
        loss, lambda lr: optax.adamw(lr, B1, B2, EPS, eps_root=EPS_ROOT, weight_decay=DECAY)
    )
    step = dl.Scheduled(adamw, schedule)
    num_steps = int(round(horizon / h)) - 1  # stop one step short of the cosine's end
    progress(f"AdamW, warmup {warmup:.3f}, cosine to {horizon}, h = {h}: {num_steps} steps")
    drifts = {}
    for order in ORDERS:
        progress(f"order-{order} flow over the schedule")
        flow = dl.ModifiedFlow(step, h, order)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.KinkWarning)  # the kink is the point here
            drifts[order] = dl.drift(step, flow, step.init(params), h, num_steps, data)
    times = drifts[0].times
    before = times < warmup
    after = times > warmup + 0.1 * horizon
    peak_before = {p: float(drifts[p].errors[before].max()) for p in ORDERS}
    peak_after = {p: float(drifts[p].errors[after].max()) for p in ORDERS}
    peak = {p: float(drifts[p].errors.max()) for p in ORDERS}
    for p in ORDERS:
        print(
            f"order {p}: largest distance to AdamW {peak[p]:.3e} (before the kink "
            f"{peak_before[p]:.3e}, after it {peak_after[p]:.3e})"
        )
    checks = {
        "before the kink, order 2 is >= 3x closer than order 1, and order 1 than order 0": (
            peak_before[1] > 3 * peak_before[2] and peak_before[0] > 3 * peak_before[1]
        ),
        "over the whole schedule, order 1 is >= 3x closer than order 0": peak[0] > 3 * peak[1],
        "after the kink, order 2's lead over order 1 shrinks below 3x": (
            peak_after[1] < 3 * peak_after[2]
        ),
    }

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    axes[0].plot(times, [float(schedule(t)) for t in times], "k")
    axes[0].axvline(warmup, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="tau = n h", ylabel="sigma(tau)", title="the schedule (rate h sigma)")
    for p in ORDERS:
        axes[1].semilogy(times[1:], drifts[p].errors[1:], label=f"order-{p} modified flow")
    axes[1].axvline(warmup, color="grey", ls=":", lw=1, label=f"warmup's kink, tau = {warmup:.3g}")
    axes[1].set(
        xlabel="tau = n h",
        ylabel="||theta_n - theta(tau)||",
        title="distance from AdamW's iterates",
    )
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"AdamW with warmup + cosine on the MLP on digits, h = {h}", fontsize=10)
    save_figure(figure, os.path.join(args.output, "training_recipe.png"))

    numbers = {
        "h": h,
        "warmup": warmup,
        "horizon": horizon,
        "steps": num_steps,
        "largest_distance": {str(p): peak[p] for p in ORDERS},
        "largest_distance_before_kink": {str(p): peak_before[p] for p in ORDERS},
        "largest_distance_after_kink": {str(p): peak_after[p] for p in ORDERS},
    }
    claim = (
        "the automatic modified flows of AdamW under a warmup + cosine schedule track its "
        "iterates with their order on each smooth piece; the warmup's kink adds an O(h^2) "
        "error that erodes the order-2 flow's lead"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
