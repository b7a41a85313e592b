"""Discretisation drift in two-player games (Rosca, Wu, Dherin & Barrett 2021).

Claims checked, on the bilinear game min_phi max_theta phi * theta and on the Dirac GAN:
1. Simultaneous GD spirals out; alternating GD stays on a bounded orbit.
2. The order-1 modified flows predict both, where the order-0 flow (a pure rotation
   for the bilinear game) predicts neither.
3. Cancelling the interaction terms of simultaneous GD's drift with explicit
   regularisers, L_phi + (h lam / 4) ||grad_theta L||^2 and
   L_theta + (h alpha / 4) ||grad_phi L||^2, removes most of the outward spiral.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import driftlab as dl
from driftlab._tree import tree_vdot
from driftlab.plotting import save_figure

from ._common import finish, parse_args, progress


NAME = "games"


def bilinear(params, data):
    phi, theta = params
    return data["scale"] * jnp.sum(phi * theta)


def dirac_gan(params, data):
    """Mescheder et al. (2018): generator phi, linear discriminator theta, data at 0."""
    phi, theta = params
    return jnp.sum(-jax.nn.softplus(-theta * phi)) + data["scale"] * 0.0


def zero_sum(value):
    """Player one minimises `value`, player two maximises it."""
    return value, lambda params, data: -value(params, data)


def interaction_cancelled(value, h, alpha, lam):
    r"""Losses whose simultaneous-GD drift has no interaction terms (to first order in h)."""

    def loss_phi(params, data):
        grad_theta = jax.grad(value)(params, data)[1]
        return value(params, data) + 0.25 * h * lam * tree_vdot(grad_theta, grad_theta)

    def loss_theta(params, data):
        grad_phi = jax.grad(value)(params, data)[0]
        return -value(params, data) + 0.25 * h * alpha * tree_vdot(grad_phi, grad_phi)

    return loss_phi, loss_theta


def _norms(path):
    phi, theta = path
    return np.sqrt(np.sum(np.asarray(phi) ** 2, axis=-1) + np.sum(np.asarray(theta) ** 2, axis=-1))


def run_game(name, value, h, t_end, y0, data):
    loss_phi, loss_theta = zero_sum(value)
    n = int(round(t_end / h))
    times = np.arange(n + 1) * h
    out = {}
    for label, step, flow in [
        (
            "simultaneous",
            dl.SimultaneousGD(loss_phi, loss_theta),
            dl.flows.SimultaneousGameFlow(loss_phi, loss_theta, h),
        ),
        (
            "alternating",
            dl.AlternatingGD(loss_phi, loss_theta),
            dl.flows.AlternatingGameFlow(loss_phi, loss_theta, h),
        ),
    ]:
        progress(f"{name}: {label} GD and its modified flow")
        out[f"{label} GD"] = _norms(dl.iterate(step, y0, h, n, data))
        out[f"{label} flow (order 1)"] = _norms(
            dl.solve(flow, y0, times[-1], ts=times, args=data, rtol=1e-10, atol=1e-10)
        )
    order0 = dl.flows.SimultaneousGameFlow(loss_phi, loss_theta, 0.0)
    out["order-0 flow"] = _norms(
        dl.solve(order0, y0, times[-1], ts=times, args=data, rtol=1e-10, atol=1e-10)
    )
    cancelled = dl.SimultaneousGD(*interaction_cancelled(value, h, 1.0, 1.0))
    out["simultaneous GD, interaction cancelled"] = _norms(dl.iterate(cancelled, y0, h, n, data))
    return times, out


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    h = 0.1
    t_end = 10.0 if args.quick else 30.0
    games = {
        "bilinear": (bilinear, (jnp.array([1.0]), jnp.array([0.0]))),
        "Dirac GAN": (dirac_gan, (jnp.array([1.0]), jnp.array([0.0]))),
    }
    data = {"scale": jnp.asarray(1.0)}
    results, checks, numbers = {}, {}, {}
    for name, (value, y0) in games.items():
        times, norms = run_game(name, value, h, t_end, y0, data)
        results[name] = (times, norms)
        final = {label: float(curve[-1] / curve[0]) for label, curve in norms.items()}
        numbers[name] = {"final_norm_over_initial": final}
        sim, alt = final["simultaneous GD"], final["alternating GD"]
        miss = lambda label, target: float(np.max(np.abs(norms[label] - norms[target])))
        numbers[name]["max_norm_error"] = {
            "simultaneous flow vs GD": miss("simultaneous flow (order 1)", "simultaneous GD"),
            "order-0 flow vs simultaneous GD": miss("order-0 flow", "simultaneous GD"),
            "alternating flow vs GD": miss("alternating flow (order 1)", "alternating GD"),
        }
        errors = numbers[name]["max_norm_error"]
        spiral = bool(np.all(np.diff(norms["simultaneous GD"]) > 0))
        checks[f"{name}: simultaneous GD spirals out (norm grows every step, x{sim:.2f})"] = (
            spiral and sim > 1.05
        )
        checks[f"{name}: alternating GD stays bounded (norm x{alt:.2f})"] = abs(alt - 1) < 0.1
        checks[f"{name}: the order-1 flows predict both better than the order-0 flow"] = (
            errors["simultaneous flow vs GD"] < errors["order-0 flow vs simultaneous GD"]
            and errors["alternating flow vs GD"] < errors["order-0 flow vs simultaneous GD"]
        )
        cancelled = final["simultaneous GD, interaction cancelled"]
        checks[f"{name}: cancelling the interaction terms removes most of the spiral"] = abs(
            cancelled - 1
        ) < 0.25 * abs(sim - 1)

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    for ax, (name, (times, norms)) in zip(axes, results.items()):
        for label, curve in norms.items():
            ax.plot(times, curve, "--" if "flow" in label else "-", label=label)
        ax.set(xlabel="time t = n h", ylabel="||(phi, theta)||", title=f"{name}, h = {h}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(figure, os.path.join(args.output, "games.png"))
    for name, values in numbers.items():
        print(f"{name}: final / initial norm:")
        for label, ratio in values["final_norm_over_initial"].items():
            print(f"  {label:>40}: {ratio:.4f}")
    claim = (
        "simultaneous GD spirals out and alternating GD does not, as the order-1 modified "
        "flows predict; cancelling the interaction drift terms stabilises simultaneous GD"
    )
    finish(NAME, args, claim, checks, numbers | {"h": h, "t_end": t_end}, start)


if __name__ == "__main__":
    main()
