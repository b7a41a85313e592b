"""Heavy-ball momentum strengthens implicit regularisation (Ghosh, Lyu, Zhang & Wang 2023).

Derivation (from `driftlab.HeavyBallFlow`): heavy-ball with step h and momentum beta
follows, with one step taking time h,

    d theta / dt = -1/(1 - beta) grad [L + h (1 + beta) / (4 (1 - beta)^2) ||grad L||^2].

In the time tau = t / (1 - beta) of its effective learning rate eta = h / (1 - beta),
one step takes time eta and the flow is the gradient flow of
L + eta (1 + beta) / (4 (1 - beta)) ||grad L||^2, while GD with step eta follows
L + eta / 4 ||grad L||^2 (IGR). At matched effective learning rate, momentum multiplies
the implicit gradient-norm penalty by (1 + beta) / (1 - beta): 3 at beta = 0.5,
19 at beta = 0.9.

Measured on the MLP on digits, for several beta at one eta: the strength c of the
flow of L + c ||grad L||^2 (`driftlab.IGRFlow` with step 4c) that best explains the
heavy-ball trajectory, by least squares on the deviation from gradient flow, as a
multiple of GD's eta / 4. Claims checked:
1. the fitted factor is (1 + beta) / (1 - beta) to within 10% for every beta;
2. the flow at the fitted strength explains at least 90% of heavy-ball's deviation
   from gradient flow;
3. at matched loss, larger beta gives a smaller ||grad L||^2.
"""

import os
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.plotting import save_figure

from ._common import at_loss_levels, finish, loss_curves, parse_args, progress


NAME = "heavy_ball"
BETAS = (0.0, 0.5, 0.8, 0.9)
#: h lambda_max as a fraction of the slow-manifold edge (1 - sqrt(beta))^2 at the largest beta.
EDGE_FRACTION = 0.25


def _flat(path) -> np.ndarray:
    """A stacked trajectory as one row of all parameters per time."""
    return np.asarray(jax.vmap(lambda params: ravel_pytree(params)[0])(path))


def predicted_factor(beta: float) -> float:
    """Heavy-ball's implicit penalty over GD's, at the same effective learning rate."""
    return (1 + beta) / (1 - beta)


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    problem = dl.problems.mlp_digits(num_samples=128 if args.quick else 512)
    loss, data, params = problem.loss, problem.data, problem.params
    lam = dl.lambda_max(loss, params, data)
    beta_max = max(BETAS)
    # heavy-ball has a real slow manifold only while h lambda < (1 - sqrt(beta))^2.
    eta = EDGE_FRACTION * (1 - np.sqrt(beta_max)) ** 2 / (1 - beta_max) / lam
    num_samples_t = 10 if args.quick else 40
    t_target = 4.0 if args.quick else 20.0
    n = int(round(t_target / eta / num_samples_t)) * num_samples_t
    every = n // num_samples_t
    times = np.arange(num_samples_t + 1) * every * eta
    progress(
        f"lambda_max = {lam:.3f}; effective rate eta = {eta:.5f} (eta lambda_max = "
        f"{eta * lam:.4f}); {n} steps to tau = {times[-1]:.2f}; beta = {BETAS}"
    )

    def igr_path(strength):
        """The gradient flow of L + strength ||grad L||^2 at the sample times."""
        flow = dl.IGRFlow(loss, 4 * strength)
        return dl.solve(flow, params, times[-1], ts=times, args=data, rtol=1e-10, atol=1e-10)

    progress("gradient flow")
    base_path = igr_path(0.0)
    base = _flat(base_path)
    fits, curves = {}, {"gradient flow": loss_curves(loss, base_path, data)}
    for beta in BETAS:
        h = eta * (1 - beta)
        progress(f"beta = {beta}: heavy-ball from the slow manifold, h = {h:.5f}")
        state = dl.HeavyBallFlow(loss, h, beta).slow_state(params, data)
        path = dl.iterate(dl.HeavyBall(loss, beta), state, h, n, data).params
        path = jax.tree_util.tree_map(lambda x: x[::every], path)
        deviation = _flat(path) - base
        strength = eta / 4 * predicted_factor(beta)
        progress(f"beta = {beta}: flow at the predicted strength, then at the fitted one")
        predicted_path = igr_path(strength)
        direction = _flat(predicted_path) - base
        # Least squares: deviation ~ s * direction, i.e. c = s * predicted strength.
        scale = float(np.sum(deviation * direction) / np.sum(direction**2))
        fitted = _flat(igr_path(scale * strength)) - base
        norm = np.linalg.norm(deviation)
        fits[beta] = {
            "h": h,
            "predicted_factor": predicted_factor(beta),
            "measured_factor": scale * predicted_factor(beta),
            "unexplained_at_predicted": float(np.linalg.norm(deviation - direction) / norm),
            "unexplained_at_fitted": float(np.linalg.norm(deviation - fitted) / norm),
            "deviation_from_gradient_flow": float(norm),
            "direction": direction,
            "deviation": deviation,
        }
        curves[f"heavy-ball, beta = {beta}"] = loss_curves(loss, path, data)
        curves[f"predicted flow, beta = {beta}"] = loss_curves(loss, predicted_path, data)

    final_losses = [values[-1] for values, _ in curves.values()]
    levels = np.linspace(max(final_losses) * 1.05, curves["gradient flow"][0][0] * 0.9, 6)
    at_levels = {label: at_loss_levels(levels, *curve) for label, curve in curves.items()}
    reference = at_levels["gradient flow"]
    relative = {label: 100 * (value - reference) / reference for label, value in at_levels.items()}

    for beta, fit in fits.items():
        print(
            f"beta = {beta}: predicted factor {fit['predicted_factor']:.3f}, measured "
            f"{fit['measured_factor']:.3f}; unexplained deviation "
            f"{100 * fit['unexplained_at_fitted']:.2f}% (fitted), "
            f"{100 * fit['unexplained_at_predicted']:.2f}% (predicted)"
        )
    print(f"||grad L||^2 vs gradient flow (%) at loss levels {np.round(levels, 3).tolist()}:")
    for beta in BETAS:
        label = f"heavy-ball, beta = {beta}"
        print(f"  {label:>24}: {np.round(relative[label], 2).tolist()}")

    ratios = [fit["measured_factor"] / fit["predicted_factor"] for fit in fits.values()]
    hb_at_levels = np.array([at_levels[f"heavy-ball, beta = {beta}"] for beta in BETAS])
    checks = {
        "the fitted factor is (1 + beta) / (1 - beta) to within 10% for every beta": bool(
            max(abs(r - 1) for r in ratios) < 0.1
        ),
        "the flow at the fitted strength explains >= 90% of the deviation from gradient flow": (
            max(fit["unexplained_at_fitted"] for fit in fits.values()) < 0.1
        ),
        "at matched loss, larger beta gives a smaller ||grad L||^2 (every level)": bool(
            np.all(np.diff(hb_at_levels, axis=0) < 0)
        ),
    }

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    factors = np.geomspace(0.3, 60, 300)
    for colour, (beta, fit) in zip(colours, fits.items()):
        deviation, direction = fit["deviation"], fit["direction"]
        scales = factors / fit["predicted_factor"]
        # Linearised in the strength: flow(c) - gradient flow ~ (c / c_predicted) * direction.
        unexplained = [np.linalg.norm(deviation - s * direction) for s in scales]
        unexplained = np.array(unexplained) / np.linalg.norm(deviation)
        axes[0].semilogx(factors, 100 * unexplained, color=colour, label=f"beta = {beta}")
        axes[0].axvline(fit["predicted_factor"], color=colour, ls=":", lw=1)
        axes[0].plot(fit["measured_factor"], 100 * fit["unexplained_at_fitted"], "o", color=colour)
    axes[0].set(
        xlabel="regulariser strength c / (eta / 4)",
        ylabel="heavy-ball deviation left unexplained (%)",
        title="fitting c in L + c ||grad L||^2 (dotted: predicted, dot: fit)",
        ylim=(0, 105),
    )
    predicted = [fit["predicted_factor"] for fit in fits.values()]
    measured = [fit["measured_factor"] for fit in fits.values()]
    axes[1].loglog([0.7, 30], [0.7, 30], "k:", lw=1, label="measured = predicted")
    for colour, beta, p, m in zip(colours, BETAS, predicted, measured):
        axes[1].loglog(p, m, "o", ms=8, color=colour, label=f"beta = {beta}: {m:.2f} vs {p:.0f}")
    axes[1].set(
        xlabel="predicted factor (1 + beta) / (1 - beta)",
        ylabel="measured factor",
        title="penalty relative to GD at the same eta",
    )
    for colour, beta in zip(colours, BETAS):
        measured_curve = relative[f"heavy-ball, beta = {beta}"]
        axes[2].plot(levels, measured_curve, "o-", color=colour, label=f"beta = {beta}")
        axes[2].plot(levels, relative[f"predicted flow, beta = {beta}"], "--", color=colour)
    axes[2].set(
        xlabel="loss level",
        ylabel="||grad L||^2 vs gradient flow (%)",
        title="gradient norm at matched loss (dashed: predicted flow)",
    )
    axes[2].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    figure.suptitle(
        f"heavy-ball on the MLP on digits at effective rate eta = {eta:.4f} "
        f"(eta lambda_max = {eta * lam:.4f}), to tau = {times[-1]:.1f}",
        fontsize=10,
    )
    save_figure(figure, os.path.join(args.output, "heavy_ball.png"))

    numbers = {
        "lambda_max": lam,
        "eta": eta,
        "steps": n,
        "tau_end": float(times[-1]),
        "fits": {
            str(beta): {k: v for k, v in fit.items() if k not in ("direction", "deviation")}
            for beta, fit in fits.items()
        },
        "loss_levels": levels.tolist(),
        "grad_norm_sq_vs_gradient_flow_percent": {k: v.tolist() for k, v in relative.items()},
    }
    claim = (
        "at matched effective learning rate h / (1 - beta), heavy-ball's implicit "
        "gradient-norm penalty is (1 + beta) / (1 - beta) times gradient descent's"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
