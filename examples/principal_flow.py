"""The principal flow and instability (Rosca, Wu, Qin & Dherin 2023).

Claims checked:
1. On a quadratic, GD's iterates lie exactly on the principal flow at every multiple
   of h, below h lambda_max = 1, between 1 and 2 (oscillation: the flow is complex)
   and beyond 2 (divergence), where gradient flow and IGR cannot follow.
2. On the MLP on digits with 1 < h lambda_max < 2, the principal flow tracks GD's
   oscillating iterates more closely than gradient flow and IGR.
3. The drift-adjusted learning rate keeps training stable with a cap at which
   fixed-step GD diverges.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import scipy.linalg

import driftlab as dl
from driftlab.plotting import save_figure

from ._common import finish, parse_args, progress


NAME = "principal_flow"
TOL = {"rtol": 1e-11, "atol": 1e-11}
# The MLP comparison resolves distances of 1e-4 and more: looser tolerances suffice.
MLP_TOL = {"rtol": 1e-8, "atol": 1e-8}


def quadratic_runs(h_lambdas, num_steps):
    quad = dl.problems.quadratic(4, condition=10.0, lambda_max=1.0, seed=0)
    a, y0 = np.asarray(quad.A), np.asarray(quad.params)
    top = np.linalg.eigh(a)[1][:, -1]
    runs = {}
    for h in h_lambdas:
        progress(f"quadratic, h lambda_max = {h}")
        times = np.arange(num_steps + 1) * h
        gd = np.stack(
            [np.linalg.matrix_power(np.eye(4) - h * a, n) @ y0 for n in range(num_steps + 1)]
        )
        principal = dl.solve(
            dl.PrincipalFlow(quad.loss, h),
            jnp.asarray(y0, jnp.complex128),
            times[-1],
            ts=times,
            args=quad.data,
            **TOL,
        )
        flows = {
            "principal flow": np.real(np.asarray(principal)),
            "gradient flow": np.stack([scipy.linalg.expm(-t * a) @ y0 for t in times]),
            "IGR flow": np.stack(
                [scipy.linalg.expm(-t * (a + 0.5 * h * a @ a)) @ y0 for t in times]
            ),
        }
        runs[h] = {"times": times, "GD": gd, **flows, "top": top}
    return runs


def mlp_run(num_samples, num_steps):
    problem = dl.problems.mlp_digits(hidden=4, num_samples=num_samples, seed=1)
    loss, data, params = problem.loss, problem.data, problem.params
    lam = dl.lambda_max(loss, params, data)
    h = 1.5 / lam
    size = sum(x.size for x in jax.tree_util.tree_leaves(params))
    progress(f"MLP ({size} parameters), h lambda_max = 1.5")
    times = np.arange(num_steps + 1) * h
    flat = lambda tree: np.concatenate(
        [np.asarray(x).reshape(len(times), -1) for x in jax.tree_util.tree_leaves(tree)], axis=1
    )
    gd = flat(dl.iterate(dl.GradientDescent(loss), params, h, num_steps, data))
    complex_params = jax.tree_util.tree_map(lambda x: x.astype(jnp.complex128), params)
    solutions = {
        "principal flow": dl.solve(
            dl.PrincipalFlow(loss, h, method="lanczos", k=5),
            complex_params,
            times[-1],
            ts=times,
            args=data,
            **MLP_TOL,
        ),
        "gradient flow": dl.solve(
            dl.GradientFlow(loss), params, times[-1], ts=times, args=data, **MLP_TOL
        ),
        "IGR flow": dl.solve(
            dl.IGRFlow(loss, h), params, times[-1], ts=times, args=data, **MLP_TOL
        ),
    }
    errors = {
        label: np.linalg.norm(np.real(flat(path)) - gd, axis=1) for label, path in solutions.items()
    }
    return {"times": times, "errors": errors, "h": h, "lambda_max": lam}


def dal_run(num_samples, num_steps):
    problem = dl.problems.mlp_digits(hidden=16, num_samples=num_samples, seed=2)
    loss, data = problem.loss, problem.data
    lam = dl.lambda_max(loss, problem.params, data)
    h = 8.0 / lam
    progress(f"DAL vs fixed-step GD at h lambda_max = 8 (h = {h:.3f})")
    losses = {}
    for label, optimiser in [
        ("GD, fixed h", optax.sgd(h)),
        ("GD with DAL (cap h)", dl.optim.drift_adjusted_learning_rate(loss, max_learning_rate=h)),
    ]:
        params, state, values = problem.params, optimiser.init(problem.params), []
        update = jax.jit(lambda g, s, p: optimiser.update(g, s, p, args=data))
        for _ in range(num_steps):
            value, grads = jax.value_and_grad(loss)(params, data)
            values.append(float(value))
            if not np.isfinite(value) or value > 1e3:
                break
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
        losses[label] = np.array(values)
    return {"losses": losses, "h": h, "lambda_max": lam}


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    h_lambdas = [0.5, 1.5, 2.2]
    quad = quadratic_runs(h_lambdas, 12 if args.quick else 30)
    mlp = mlp_run(64 if args.quick else 256, 8 if args.quick else 20)
    dal = dal_run(64 if args.quick else 256, 40 if args.quick else 200)

    checks, numbers = {}, {"quadratic": {}, "mlp": {}, "dal": {}}
    for h, run in quad.items():
        scale = np.linalg.norm(run["GD"], axis=1)
        relative = {
            label: float(np.max(np.linalg.norm(run[label] - run["GD"], axis=1) / scale))
            for label in ("principal flow", "gradient flow", "IGR flow")
        }
        numbers["quadratic"][str(h)] = {
            "max_relative_error": relative,
            "final_norm": float(scale[-1]),
        }
        label = f"quadratic, h lambda = {h}: GD lies on the principal flow"
        checks[f"{label} (max rel. error {relative['principal flow']:.1e})"] = (
            relative["principal flow"] < 1e-8
        )
        top = {label: run[label] @ run["top"] for label in ("GD", "gradient flow", "IGR flow")}
        top_miss = {
            label: float(np.max(np.abs(top[label] - top["GD"]) / np.abs(top["GD"])))
            for label in ("gradient flow", "IGR flow")
        }
        numbers["quadratic"][str(h)]["top_component_max_relative_error"] = top_miss
        if h > 1:
            checks[
                f"quadratic, h lambda = {h}: along the top eigenvector gradient flow and IGR "
                "miss GD by more than 50%"
            ] = min(top_miss.values()) > 0.5
    signs = np.sign(quad[1.5]["GD"] @ quad[1.5]["top"])
    checks["quadratic, h lambda = 1.5: GD oscillates along the top eigenvector"] = bool(
        np.all(signs[1:] != signs[:-1])
    )
    diverging = np.abs(quad[2.2]["GD"] @ quad[2.2]["top"])
    checks["quadratic, h lambda = 2.2: GD diverges along the top eigenvector"] = bool(
        np.all(np.diff(diverging) > 0)
    )
    first_errors = {label: float(err[1]) for label, err in mlp["errors"].items()}
    final_errors = {label: float(err[-1]) for label, err in mlp["errors"].items()}
    numbers["mlp"] = {
        "h": mlp["h"],
        "lambda_max": mlp["lambda_max"],
        "distance_to_gd_after_one_step": first_errors,
        "distance_to_gd_at_the_end": final_errors,
    }
    for when, errors in (("after one step", first_errors), ("at the end", final_errors)):
        checks[
            f"MLP, h lambda_max = 1.5: the principal flow is closer to GD than gradient flow "
            f"and IGR {when}"
        ] = errors["principal flow"] < min(errors["gradient flow"], errors["IGR flow"])
    gd_losses, dal_losses = dal["losses"]["GD, fixed h"], dal["losses"]["GD with DAL (cap h)"]
    numbers["dal"] = {
        "h": dal["h"],
        "lambda_max": dal["lambda_max"],
        "final_loss": {k: float(v[-1]) for k, v in dal["losses"].items()},
        "steps": {k: len(v) for k, v in dal["losses"].items()},
    }
    checks["DAL: fixed-step GD at h lambda_max = 8 is unstable (loss rises above its start)"] = (
        bool(not np.all(np.isfinite(gd_losses)) or np.max(gd_losses[1:]) > gd_losses[0])
    )
    checks["DAL: the drift-adjusted run never rises above its start and ends lower"] = bool(
        np.all(np.isfinite(dal_losses))
        and np.max(dal_losses[1:]) <= dal_losses[0]
        and dal_losses[-1] < dal_losses[0]
    )

    figure, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for ax, h in zip(axes[:2], (1.5, 2.2)):
        run = quad[h]
        for label in ("GD", "principal flow", "gradient flow", "IGR flow"):
            style = "o" if label == "GD" else "-"
            ax.plot(run["times"], run[label] @ run["top"], style, label=label, ms=4)
        ax.set(
            xlabel="time t = n h",
            ylabel="component along top eigenvector",
            title=f"quadratic, h lambda_max = {h}",
        )
        if h > 2:
            ax.set_yscale("symlog", linthresh=1e-2)
    for label, err in mlp["errors"].items():
        axes[2].semilogy(mlp["times"][1:], err[1:], label=label)
    axes[2].set(
        xlabel="time t = n h", ylabel="distance to GD's iterates", title="MLP, h lambda_max = 1.5"
    )
    for label, values in dal["losses"].items():
        axes[3].semilogy(values, label=label)
    axes[3].set(xlabel="step", ylabel="loss", title="MLP, h lambda_max = 8: fixed step vs DAL")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(figure, os.path.join(args.output, "principal_flow.png"))
    print(
        "quadratic: max relative error to GD: "
        + "; ".join(
            f"h lambda={h}: "
            + ", ".join(
                f"{k} {v:.2e}"
                for k, v in numbers["quadratic"][str(h)]["max_relative_error"].items()
            )
            for h in h_lambdas
        )
    )
    print(
        "MLP: final distance to GD: " + ", ".join(f"{k} {v:.3e}" for k, v in final_errors.items())
    )
    print(f"DAL: final losses {numbers['dal']['final_loss']} after steps {numbers['dal']['steps']}")
    claim = (
        "beyond h lambda_max = 1 and 2 the principal flow follows GD's oscillation and "
        "divergence where gradient flow and IGR cannot; DAL keeps a run stable where a "
        "fixed step diverges"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
