"""Batch sharpness along minibatch SGD: the edge of stochastic stability (Andreyev & Beneventano).

Minibatch SGD with step h on fc-tanh [64, 64] (mse) on 512 digits, at two batch sizes and at
full batch (GD), from the same initialisation. Every `--every` steps: the batch sharpness
E_B[g_B^T H_B g_B / |g_B|^2] (`driftlab.batch_sharpness`, Monte Carlo over `--draws` batches
of the run's size), lambda_max of the full loss (device Lanczos) and 2/h. The paper's claim:
batch sharpness, not lambda_max, hovers at 2/h for minibatch SGD; lambda_max stays below.
Full batch is Cohen et al.'s edge of stability, where lambda_max itself reaches 2/h.

    python -m benchmarks.batch_sharpness [--steps 4000] [--quick]

Writes batch_sharpness.{json,md,png} to benchmarks/results/.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import matplotlib

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic

from ._common import command_line, markdown_table, Progress, RESULTS_DIR, write_text_atomic


matplotlib.use("Agg")


def draw_batch(data, batch_size: int, key):
    """`batch_size` distinct samples drawn uniformly from `data`."""
    num_samples = jtu.tree_leaves(data)[0].shape[0]
    indices = jr.choice(key, num_samples, (batch_size,), replace=False)
    return jtu.tree_map(lambda leaf: leaf[indices], data)


def sharpness_run(problem, h, batch_size, num_steps, every, draws, *, key, progress=None):
    """Minibatch SGD with step `h` (fresh uniform batches each step; `batch_size=None`: GD).

    **Returns:** a dict of lists over the checkpoints `0, every, 2 every, ...`: `steps`,
    `loss` (full), `lambda_max` (full loss), `batch_sharpness` (mean over `draws` batches
    of `batch_size`; at full batch, g^T H g / |g|^2 of the full loss).
    """
    loss, data = problem.loss, problem.data
    full = jtu.tree_map(lambda leaf: leaf[None], data)

    @jax.jit
    def advance(params, keys):
        def step(params, key):
            batch = data if batch_size is None else draw_batch(data, batch_size, key)
            return dl.SGD(loss)(params, h, batch), None

        return jax.lax.scan(step, params, keys)[0]

    params = problem.params
    record = {"steps": [], "loss": [], "lambda_max": [], "batch_sharpness": []}
    step_key, measure_key = jr.split(key)
    for checkpoint in range(num_steps // every + 1):
        if checkpoint:
            keys = jr.split(jr.fold_in(step_key, checkpoint), every)
            params = advance(params, keys)
        value = float(loss(params, data))
        if not jnp.isfinite(value):
            raise dl.MeasurementError(f"SGD diverged (batch size {batch_size}, h = {h}).")
        measured = full
        if batch_size is not None:
            keys = jr.split(jr.fold_in(measure_key, checkpoint), draws)
            measured = jax.vmap(lambda key: draw_batch(data, batch_size, key))(keys)
        record["steps"].append(checkpoint * every)
        record["loss"].append(value)
        record["lambda_max"].append(dl.lambda_max(loss, params, data))
        record["batch_sharpness"].append(dl.batch_sharpness(loss, params, measured))
        if progress is not None and checkpoint % 5 == 0:
            progress(
                f"batch {batch_size or 'full'}, step {checkpoint * every}: loss {value:.4f}, "
                f"lambda_max {record['lambda_max'][-1]:.2f}, batch sharpness "
                f"{record['batch_sharpness'][-1]:.2f}, 2/h {2 / h:.1f}"
            )
    return record


def _late_summary(record, h, fraction=0.5):
    """Means over the last `fraction` of the checkpoints, relative to 2/h."""
    start = int(len(record["steps"]) * (1 - fraction))
    late = lambda key: sum(record[key][start:]) / len(record[key][start:])  # noqa: E731
    return {
        "batch_sharpness_over_2_over_h": late("batch_sharpness") * h / 2,
        "lambda_max_over_2_over_h": late("lambda_max") * h / 2,
    }


def _figure(records, h, path):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 4), sharey=True)
    for ax, (label, record) in zip(axes, records.items()):
        ax.plot(record["steps"], record["batch_sharpness"], "C0", label="batch sharpness")
        ax.plot(record["steps"], record["lambda_max"], "C3", label="lambda_max (full loss)")
        ax.axhline(2 / h, color="k", ls="--", lw=1, label="2/h")
        ax.set(xlabel="step", title=f"batch size {label}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("curvature")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"fc-tanh [64, 64] on 512 digits, SGD with h = {h}", fontsize=10)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--draws", type=int, default=64, help="batches per sharpness estimate")
    parser.add_argument("--h", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="200 steps (smoke run)")
    parser.add_argument("--output", default=RESULTS_DIR)
    options = parser.parse_args(argv)
    if options.quick:
        options.steps, options.every, options.draws = 200, 50, 8
    progress = Progress()
    problem = dl.problems.fc_digits(width=64, depth=2, num_samples=512)
    h = options.h
    records = {}
    for batch_size in (16, 64, None):
        label = str(batch_size or "full (512)")
        records[label] = sharpness_run(
            problem,
            h,
            batch_size,
            options.steps,
            options.every,
            options.draws,
            key=jr.key(0),
            progress=progress,
        )
    summaries = {label: _late_summary(record, h) for label, record in records.items()}
    rows = [
        [label, s["batch_sharpness_over_2_over_h"], s["lambda_max_over_2_over_h"]]
        for label, s in summaries.items()
    ]
    text = "\n".join(
        [
            "# Batch sharpness along SGD (edge of stochastic stability)",
            "",
            f"`{command_line('benchmarks.batch_sharpness', argv)}`: fc-tanh [64, 64] (mse), "
            f"512 digits, h = {h} (2/h = {2 / h:g}), {options.steps} steps; batch sharpness "
            f"over {options.draws} random batches of the run's size every {options.every} "
            "steps. Means over the second half of the run, in units of 2/h:",
            "",
            markdown_table(["batch size", "batch sharpness / (2/h)", "lambda_max / (2/h)"], rows),
            "",
            "![batch sharpness, lambda_max and 2/h](batch_sharpness.png)",
        ]
    )
    print(text)
    os.makedirs(options.output, exist_ok=True)
    write_text_atomic(text + "\n", os.path.join(options.output, "batch_sharpness.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": command_line("benchmarks.batch_sharpness", argv),
            "h": h,
            "steps": options.steps,
            "every": options.every,
            "draws": options.draws,
            "runs": records,
            "late_means_over_2_over_h": summaries,
        },
        os.path.join(options.output, "batch_sharpness.json"),
    )
    _figure(records, h, os.path.join(options.output, "batch_sharpness.png"))
    progress(f"wrote {options.output}/batch_sharpness.{{json,md,png}}")


if __name__ == "__main__":
    main()
