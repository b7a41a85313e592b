"""Data sharded over four (simulated) devices, parameters replicated: one device's results.

XLA fixes the number of host devices when JAX starts, so the check runs in a
subprocess with `--xla_force_host_platform_device_count=4`. Inside it, every
measurement is computed twice, from unsharded arrays (one device) and from a
batch sharded over a `Mesh` with replicated parameters, and the differences and
the output shardings are printed as JSON for the assertions here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest


SCRIPT = textwrap.dedent(
    """
    import json

    import equinox as eqx
    import jax
    import jax.tree_util as jtu
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import driftlab as dl

    problem = dl.problems.mlp_digits(hidden=8, num_samples=128, seed=0)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = jax.device_put(problem.data, NamedSharding(mesh, PartitionSpec("data")))
    params = jax.device_put(problem.params, NamedSharding(mesh, PartitionSpec()))
    step, h = dl.GradientDescent(problem.loss), 0.3
    igr = lambda h: dl.IGRFlow(problem.loss, h)
    cases = {
        "step": lambda p, d: eqx.filter_jit(step)(p, h, d),
        "iterate": lambda p, d: dl.iterate(step, p, h, 4, d),
        "modified_field_order_2": lambda p, d: eqx.filter_jit(dl.ModifiedFlow(step, h, 2))(
            0.0, p, d
        ),
        "solve_modified_order_1": lambda p, d: dl.solve(
            dl.ModifiedFlow(step, h, 1), p, 0.5, args=d
        ),
        "local_error": lambda p, d: dl.local_error(step, igr(h), p, h, d).error,
        "order_errors": lambda p, d: dl.order_of_accuracy(
            step, igr, p, [0.05, 0.1, 0.2], "local", d
        ).errors,
        "order_slope": lambda p, d: dl.order_of_accuracy(
            step, igr, p, [0.05, 0.1, 0.2], "local", d
        ).slope,
        "lambda_max": lambda p, d: dl.lambda_max(problem.loss, p, d),
        "hessian_eigenpairs": lambda p, d: dl.hessian_eigenpairs(
            problem.loss, p, d, k=3, method="lanczos"
        ).eigenvalues,
        "stability_index": lambda p, d: dl.stability_index(step, p, h, d),
    }
    shard_shapes = sorted({s.data.shape for s in batch["x"].addressable_shards})
    report = {"num_devices": len(jax.devices()), "shard_shapes": shard_shapes}
    for name, run in cases.items():
        one, many = run(problem.params, problem.data), run(params, batch)
        pairs = [
            (np.asarray(a), b) for a, b in zip(jtu.tree_leaves(one), jtu.tree_leaves(many))
        ]
        shardings = [getattr(leaf, "sharding", None) for _, leaf in pairs]
        report[name] = {
            "difference": max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in pairs),
            "scale": max(float(np.max(np.abs(a))) for a, _ in pairs),
            "replicated_on_mesh": all(
                isinstance(s, NamedSharding) and s.mesh == mesh and s.is_fully_replicated
                for s in shardings
            ),
        }
    print(json.dumps(report))
    """
)

ARRAY_OUTPUTS = ["step", "iterate", "modified_field_order_2", "solve_modified_order_1"]


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_with_the_batch_sharded(report):
    assert report["num_devices"] == 4
    assert report["shard_shapes"] == [[128 // 4, 64]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ARRAY_OUTPUTS
    + ["local_error", "order_errors", "lambda_max", "hessian_eigenpairs"]
    + ["stability_index"],
)
def test_sharded_results_equal_one_device(report, name):
    entry = report[name]
    assert entry["difference"] <= 1e-12 * max(1.0, entry["scale"])


@pytest.mark.slow
def test_fitted_slope_moves_only_by_round_off(report):
    # The slope is fitted to logs of errors that are themselves differences of nearly
    # equal states; summing the batch in another order moves them at round-off, which
    # the logarithm turns into a relative change of about 1e-15 / error ~ 1e-10.
    assert report["order_slope"]["difference"] <= 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("name", ARRAY_OUTPUTS)
def test_outputs_keep_their_sharding(report, name):
    assert report[name]["replicated_on_mesh"]
