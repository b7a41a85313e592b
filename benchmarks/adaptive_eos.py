"""Adaptive gradient methods at the edge of stability (Cohen et al. 2022, arXiv 2207.14484).

Full-batch RMSProp and Adam (b1 = 0.9) on two of the EoS suite's networks (fc-tanh on a subset
of digits, a deep linear network), from the same initialisation. Every `--every` steps: the
loss, the preconditioned sharpness lambda_1(P^-1 H) with P the diagonal the *next* update
divides by (`driftlab.analysis.preconditioned_eigenpairs`), its threshold
(`driftlab.analysis.preconditioned_stability_threshold`: 2/h for RMSProp, (2 + 2 b1) /
((1 - b1) h) = 38/h for Adam at b1 = 0.9) and the plain sharpness lambda_max(H). The paper's
claim: the preconditioned sharpness rises to its threshold and hovers there, while the
plain sharpness keeps rising (the preconditioner adapts to keep P^-1 H at the edge).

    python -m benchmarks.adaptive_eos [--quick]

Writes adaptive_eos.{json,md,png} to benchmarks/results/.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import matplotlib

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic
from driftlab.analysis import preconditioned_eigenpairs, preconditioned_stability_threshold
from driftlab.integrators import advance

from ._common import command_line, fmt, markdown_table, Progress, RESULTS_DIR, write_text_atomic


matplotlib.use("Agg")

#: Within this fraction of the threshold, a checkpoint counts as hovering at the edge.
HOVER_TOLERANCE = 0.1


def make_optimiser(name: str, loss, *, b1: float, b2: float, eps: float):
    """Full-batch RMSProp (decay `b2`) or Adam (`b1`, `b2`), both dividing by sqrt(nu) + eps."""
    if name == "rmsprop":
        return dl.RMSProp(loss, rho=b2, eps=eps, eps_inside_sqrt=False)
    if name == "adam":
        return dl.Adam(loss, b1=b1, b2=b2, eps=eps)
    raise dl.InputError(f"`name` must be 'rmsprop' or 'adam', got {name!r}.")


def next_preconditioner(optimiser, state, args):
    r"""The diagonal $P$ the optimiser's next step divides by, from its current state.

    As in Cohen et al. (2022): the second moment is first updated with the gradient at the
    current parameters, $\nu' = \beta_2\nu + (1-\beta_2)g^2$; Adam then bias-corrects it,
    $\hat\nu' = \nu' / (1-\beta_2^{n+1})$; $P = \sqrt{\hat\nu'} + \epsilon$.
    """
    grad = jax.grad(optimiser.loss)(state.params, args)
    decay = optimiser.rho if isinstance(optimiser, dl.RMSProp) else optimiser.b2
    nu = jtu.tree_map(lambda v, g: decay * v + (1 - decay) * g**2, state.nu, grad)
    if isinstance(optimiser, dl.Adam):
        nu = jtu.tree_map(lambda v: v / (1 - decay ** (state.count + 1)), nu)
    return jtu.tree_map(lambda v: jnp.sqrt(v) + optimiser.eps, nu)


def adaptive_run(problem, name, h, num_steps, every, *, b1=0.9, b2=0.99, eps=1e-8, progress=None):
    """Full-batch `name` ('rmsprop' or 'adam') with step `h` on `problem`, measured every `every`.

    **Returns:** a dict: `threshold` (the preconditioned stability threshold: b1 = 0 for
    RMSProp) and lists over the checkpoints `0, every, 2 every, ...`: `steps`, `loss`,
    `preconditioned_sharpness` (lambda_1(P^-1 H), P from the state at that step), and
    `lambda_max` (of H).
    """
    loss, data = problem.loss, problem.data
    optimiser = make_optimiser(name, loss, b1=b1, b2=b2, eps=eps)
    threshold = preconditioned_stability_threshold(h, b1 if name == "adam" else 0.0)
    state = optimiser.init(problem.params)
    record = {
        "threshold": threshold,
        "steps": [],
        "loss": [],
        "preconditioned_sharpness": [],
        "lambda_max": [],
    }
    for checkpoint in range(num_steps // every + 1):
        if checkpoint:
            state = advance(optimiser, state, h, every, data)
        value = float(loss(state.params, data))
        if not jnp.isfinite(value):
            raise dl.MeasurementError(f"{name} diverged (h = {h}).")
        preconditioner = next_preconditioner(optimiser, state, data)
        spectrum = preconditioned_eigenpairs(loss, state.params, preconditioner, data)
        record["steps"].append(checkpoint * every)
        record["loss"].append(value)
        record["preconditioned_sharpness"].append(float(spectrum.eigenvalues[-1]))
        record["lambda_max"].append(dl.lambda_max(loss, state.params, data))
        if progress is not None and checkpoint % 10 == 0:
            progress(
                f"{name}, step {checkpoint * every}: loss {value:.4g}, preconditioned sharpness "
                f"{record['preconditioned_sharpness'][-1]:.4g} (threshold {threshold:.4g}), "
                f"lambda_max {record['lambda_max'][-1]:.4g}"
            )
    return record


def verdict(record, tolerance=HOVER_TOLERANCE):
    """Does the run reach its threshold, hover there, and does lambda_max keep rising?

    `reaches`: some checkpoint's preconditioned sharpness lies within `tolerance` of the
    threshold; `first_step`: the first such (a run may come down to it: RMSProp from nu = 0
    starts far above, its first P being sqrt(1 - rho) |g|); `hovering`: checkpoints from there
    on within `tolerance` (of `after`, their number); `starts_above`: the first checkpoint is
    above the band; `lambda_max_growth`: lambda_max at the last checkpoint over lambda_max at
    `first_step`.
    """
    ratios = [s / record["threshold"] for s in record["preconditioned_sharpness"]]
    near = [abs(r - 1) <= tolerance for r in ratios]
    first = next((i for i, inside in enumerate(near) if inside), None)
    result = {"starts_above": ratios[0] > 1 + tolerance, "max_ratio": max(ratios)}
    if first is None:
        return result | {"reaches": False, "first_step": None, "hovering": 0, "after": 0,
                         "lambda_max_growth": None}  # fmt: skip
    return result | {
        "reaches": True,
        "first_step": record["steps"][first],
        "hovering": sum(near[first:]),
        "after": len(near) - first,
        "lambda_max_growth": record["lambda_max"][-1] / record["lambda_max"][first],
    }


#: Per network: how to build it, the steps, and each optimiser's h.
CASES = {
    "fc-digits": dict(
        make=lambda: dl.problems.fc_digits(width=32, depth=2, num_samples=256),
        num_steps=500,
        every=10,
        hs={"rmsprop": 2e-3, "adam": 5e-3},
    ),
    # Adam's loss falls to 1e-6 here; the preconditioned sharpness rises as the gradients
    # (and P) shrink: at h = 5e-3 it reaches only 0.56 x 38/h by step 500.
    "deep-linear": dict(
        make=lambda: dl.problems.deep_linear(dim=8, depth=5, num_samples=100, init_scale=0.85),
        num_steps=800,
        every=10,
        hs={"rmsprop": 2e-3, "adam": 1e-2},
    ),
}


def _figure(records, path):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(records), figsize=(3.6 * len(records), 5.5), sharex="col")
    for column, (label, record) in enumerate(records.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.plot(record["steps"], record["loss"], "C0")
        top.set(yscale="log", title=label)
        bottom.plot(record["steps"], record["preconditioned_sharpness"], "C3", label="λ1(P⁻¹H)")
        bottom.axhline(record["threshold"], color="k", ls="--", lw=1, label="threshold")
        # RMSProp from nu = 0 starts tens of times above its threshold: clip that start.
        top_value = 1.6 * record["threshold"]
        start = record["preconditioned_sharpness"][0]
        if start > top_value:
            bottom.annotate(f"step 0: {start:.3g}", (0.35, 0.93), xycoords="axes fraction")
        bottom.set(xlabel="step", ylim=(0, top_value))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("train loss")
    axes[1, 0].set_ylabel("preconditioned sharpness")
    axes[1, 0].legend(fontsize=8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps per run (smoke run)")
    parser.add_argument("--output", default=RESULTS_DIR)
    options = parser.parse_args(argv)
    progress = Progress()
    records, settings = {}, {}
    for network, case in CASES.items():
        problem = case["make"]()
        num_steps = 100 if options.quick else case["num_steps"]
        for name, h in case["hs"].items():
            label = f"{name} / {network}"
            settings[label] = {"h": h, "num_steps": num_steps, "every": case["every"]}
            records[label] = adaptive_run(
                problem, name, h, num_steps, case["every"], progress=progress
            )
    verdicts = {label: verdict(record) for label, record in records.items()}
    rows = [
        [
            label,
            settings[label]["h"],
            fmt(records[label]["threshold"]),
            "above" if v["starts_above"] else "below",
            "yes" if v["reaches"] else f"no (max {v['max_ratio']:.2f})",
            v["first_step"] if v["reaches"] else "-",
            f"{v['hovering']} / {v['after']}" if v["reaches"] else "-",
            fmt(v["lambda_max_growth"]) if v["reaches"] else "-",
        ]
        for label, v in verdicts.items()
    ]
    headers = [
        "run",
        "h",
        "threshold",
        "step 0",
        "reaches (within 10%)",
        "first step in band",
        "checkpoints within 10% after",
        "lambda_max last / at onset",
    ]
    text = "\n".join(
        [
            "# Adaptive edge of stability (Cohen et al. 2022)",
            "",
            f"`{command_line('benchmarks.adaptive_eos', argv)}`: full-batch RMSProp (rho = 0.99)"
            " and Adam (b1 = 0.9, b2 = 0.99), eps = 1e-8, P = sqrt(nu_hat) + eps from the state"
            " of the next update; measured every "
            f"{next(iter(settings.values()))['every']} steps.",
            "",
            markdown_table(headers, rows),
            "",
            "![loss and preconditioned sharpness](adaptive_eos.png)",
        ]
    )
    print(text)
    os.makedirs(options.output, exist_ok=True)
    write_text_atomic(text + "\n", os.path.join(options.output, "adaptive_eos.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": command_line("benchmarks.adaptive_eos", argv),
            "settings": settings,
            "runs": records,
            "verdicts": verdicts,
        },
        os.path.join(options.output, "adaptive_eos.json"),
    )
    _figure(records, os.path.join(options.output, "adaptive_eos.png"))
    progress(f"wrote {options.output}/adaptive_eos.{{json,md,png}}")


if __name__ == "__main__":
    main()
