"""A curated mutation check: plant one-line bugs in the maths and the measurement code, one at a
time, run the tests that should catch each, and report the survivors.

    python -m benchmarks.mutation_check                 # every mutant (long: see docs/testing.md)
    python -m benchmarks.mutation_check --only principal-branch floor-rule
    python -m benchmarks.mutation_check --list
    python -m benchmarks.mutation_check --only kit-rtol --update  # rerun one, keep the others

Each mutant is a one-token change (a constant, a sign, an index, a branch) that a reader could
plausibly make; its `tests` are the few test files or node ids that should kill it. The tree is
copied once to a temporary folder and every mutant is planted there and restored after its run,
so the working tree is never modified, even on Ctrl-C. A mutant is *killed* when its tests fail,
*survives* when they pass, and *timed out* when they exceed `--timeout` (counted as killed, as
mutation tools do: a planted bug that makes the tests hang is caught). Before the mutants, the
union of the targeted tests runs once unmutated: they must pass, or the check means nothing.
Not run in CI: it takes about as long as the targeted tests times the number of mutants.
Results: benchmarks/results/mutation_check.json and .md.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from driftlab._io import machine_info, write_json_atomic

from ._common import command_line, markdown_table, RESULTS_DIR, write_text_atomic


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", ".pytest_cache", ".hypothesis", "results", "site", "*.png"
)


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTANTS = [
    # --- wrong coefficients -------------------------------------------------------------------
    Mutant(
        "igr-coefficient",
        "driftlab/flows/_gradient.py",
        "-g - 0.5 * self.h * hg",
        "-g - 0.25 * self.h * hg",
        ("tests/test_flows.py::test_flows_are_diffrax_vector_fields_on_pytrees",),
        "IGR's h/2 Hg as h/4 Hg",
    ),
    Mutant(
        "heavy-ball-coefficient",
        "driftlab/flows/_momentum.py",
        "scale = self.h * (1 + self.beta) / (2 * (1 - self.beta) ** 2)",
        "scale = self.h * (1 - self.beta) / (2 * (1 - self.beta) ** 2)",
        ("tests/test_memory_flows.py::test_heavy_ball_slow_root_coefficients",),
        "heavy-ball flow's (1 + beta) as (1 - beta)",
    ),
    Mutant(
        "sgd-flow-coefficient",
        "driftlab/flows/_sgd.py",
        "-jnp.mean(g, axis=0) - 0.5 * self.h * jnp.sum(hg, axis=0) / m",
        "-jnp.mean(g, axis=0) - 0.25 * self.h * jnp.sum(hg, axis=0) / m",
        ("tests/test_literature_flows.py::test_sgd_flow_matches_the_order_averaged_epoch",),
        "SGD flow's h/2 as h/4",
    ),
    Mutant(
        "alternating-game-sign",
        "driftlab/flows/_games.py",
        "v - 0.5 * self.h * d + self.h * c",
        "v - 0.5 * self.h * d - self.h * c",
        ("tests/test_game_flows.py::test_game_flows_agree_with_modified_flow",),
        "alternating GD's cross term with the wrong sign",
    ),
    Mutant(
        "adam-flow-coefficient",
        "driftlab/flows/_adaptive.py",
        "mu = jtu.tree_map(lambda g, hf: g - self.h * hf / (1 - self.b1), grad, h_f0)",
        "mu = jtu.tree_map(lambda g, hf: g - self.h * hf / (1 + self.b1), grad, h_f0)",
        ("tests/test_memory_flows.py::test_agrees_with_modified_flow_on_the_slow_manifold",),
        "Adam's slow first moment with 1 + b1",
    ),
    Mutant(
        "heavy-ball-exact-root",
        "driftlab/flows/_momentum.py",
        "root = 0.5 * (b + np.sqrt(b**2 - 4 * beta))",
        "root = 0.5 * (b - np.sqrt(b**2 - 4 * beta))",
        ("tests/test_memory_flows.py::test_heavy_ball_flow_against_exact_slow_field",),
        "the exact slow field from the fast root",
    ),
    # --- weights ------------------------------------------------------------------------------
    Mutant(
        "log-weights",
        "driftlab/flows/_taylor.py",
        "weights[: k + 1] += (-1) ** (k + 1) / k * difference_weights(k)",
        "weights[: k + 1] += (-1) ** (k + 1) / (k + 1) * difference_weights(k)",
        ("tests/test_modified_flow.py::test_gd_quadratic_coefficients_to_order_6",),
        "the logarithm's series weights 1/n as 1/(n+1)",
    ),
    Mutant(
        "euler-jet-scaling",
        "driftlab/flows/_taylor.py",
        "lambda *x: fn(jtu.tree_unflatten(treedef, x)), leaves, series, factorial_scaled=False",
        "lambda *x: fn(jtu.tree_unflatten(treedef, x)), leaves, series, factorial_scaled=True",
        ("tests/test_modified_flow.py::test_euler_on_y_squared",),
        "an Euler map's automatic f_3.. from jets with the wrong series convention",
    ),
    # --- step-size conventions ----------------------------------------------------------------
    Mutant(
        "epoch-duration",
        "driftlab/integrators/_maps.py",
        "        return h * num_batches(args)\n\n\nclass OrderAveragedSGDEpoch",
        "        return h\n\n\nclass OrderAveragedSGDEpoch",
        (
            "tests/test_maps.py::test_sgd_epoch_applies_the_batches_in_the_given_order",
            "tests/test_literature_flows.py::test_exact_batch_sgd_agrees_with_modified_flow",
        ),
        "an SGD epoch lasting h instead of m h",
    ),
    Mutant(
        "game-step-size",
        "driftlab/integrators/_maps.py",
        "return phi, _axpy(-self.lam * h, grad_theta, theta)",
        "return phi, _axpy(-self.alpha * h, grad_theta, theta)",
        ("tests/test_game_flows.py::test_game_flows_match_matrix_logarithm_with_unequal_steps",),
        "the second player stepping with the first player's rate",
    ),
    # --- optimiser updates --------------------------------------------------------------------
    Mutant(
        "heavy-ball-update",
        "driftlab/integrators/_maps.py",
        "momentum = _axpy(self.beta, y.momentum, _grad(self.loss, y.params, args))",
        "momentum = _axpy(-self.beta, y.momentum, _grad(self.loss, y.params, args))",
        ("tests/test_maps.py::test_heavy_ball_is_polyak_momentum",),
        "heavy-ball's buffer decaying with -beta",
    ),
    Mutant(
        "adam-second-moment",
        "driftlab/integrators/_maps.py",
        "nu = jtu.tree_map(lambda v, g: self.b2 * v + (1 - self.b2) * g**2, y.nu, grad)",
        "nu = jtu.tree_map(lambda v, g: self.b2 * v + (1 - self.b1) * g**2, y.nu, grad)",
        ("tests/test_maps.py::test_stateful_maps_match_optax",),
        "Adam's second moment weighted with b1",
    ),
    # --- corrected-field terms ----------------------------------------------------------------
    Mutant(
        "corrected-field-target-series",
        "driftlab/flows/_cancellation.py",
        "derivatives = [c * math.factorial(m) for m, c in enumerate(coefficients[1:], 1)]",
        "derivatives = [c * math.factorial(m - 1) for m, c in enumerate(coefficients[1:], 1)]",
        ("tests/test_cancellation.py::test_gd_quadratic_coefficients",),
        "the target flow's Taylor series fed to its jet with the wrong factorials",
    ),
    # --- the three gaps of issue 20 -----------------------------------------------------------
    Mutant(
        "principal-branch",
        "driftlab/flows/_principal.py",
        "value = jnp.log((1 - safe).astype(jnp.complex128)) / safe",
        "value = jnp.conj(jnp.log((1 - safe).astype(jnp.complex128))) / safe",
        ("tests/test_principal_flow.py::test_path_between_steps_is_the_principal_power",),
        "the principal flow on the -i pi branch for h lambda > 1",
    ),
    Mutant(
        "floor-rule",
        "driftlab/analysis/_order.py",
        "FLOOR_MARGIN = 10.0",
        "FLOOR_MARGIN = 1.0",
        ("tests/test_analysis.py::test_round_off_floor_points_are_excluded_and_reported",),
        "the fit using points within 10x of the floor",
    ),
    Mutant(
        "kit-rtol",
        "driftlab/testing/_assertions.py",
        "    rtol: float = 1e-10,\n    atol: float = 1e-14,\n) -> list[Y]:",
        "    rtol: float = 1e-4,\n    atol: float = 1e-14,\n) -> list[Y]:",
        ("tests/test_testing_kit.py::test_coefficients_off_by_a_tiny_relative_error_are_caught",),
        "assert_coefficients_match accepting a 1e-5 relative error",
    ),
    # --- measurement plumbing (added with issue 20) -------------------------------------------
    Mutant(
        "roundoff-floor-scale",
        "driftlab/analysis/_error.py",
        "ROUNDOFF_ULPS = 100.0",
        "ROUNDOFF_ULPS = 1e6",
        ("tests/test_analysis.py::test_round_off_floor_points_are_excluded_and_reported",),
        "a round-off floor 1e4 times too high",
    ),
    Mutant(
        "expected-slope",
        "driftlab/analysis/_order.py",
        'expected = order + (2 if kind == "local" else 1)',
        'expected = order + (2 if kind == "local" else 2)',
        ("tests/test_analysis.py::test_gd_orders_on_a_quadratic",),
        "a global order expected at p + 2",
    ),
    Mutant(
        "global-flow-time",
        "driftlab/analysis/_error.py",
        "return float(step.duration(h, args)) * num_steps",
        "return float(step.duration(h, args)) * (num_steps + 1)",
        ("tests/test_analysis.py::test_global_error_compares_at_a_whole_number_of_steps",),
        "the flow run one step longer than the map",
    ),
    Mutant(
        "lanczos-top-k",
        "driftlab/flows/_principal.py",
        "values, ritz = values[num_iterations - k :], ritz[:, num_iterations - k :]",
        "values, ritz = values[:k], ritz[:, :k]",
        ("tests/test_principal_flow.py::test_lanczos_against_dense_and_igr",),
        "Lanczos keeping the smallest k Ritz pairs",
    ),
    Mutant(
        "dal-rate",
        "driftlab/optim/_dal.py",
        "2.0 / jnp.where(ratio > 0, ratio, 1.0) ** power",
        "1.0 / jnp.where(ratio > 0, ratio, 1.0) ** power",
        ("tests/test_optim.py::test_dal_learning_rate_formula",),
        "the drift-adjusted learning rate 1/v instead of 2/v",
    ),
    Mutant(
        "registry-adam",
        "driftlab/_registry.py",
        "problem.loss, h, step.b1, step.b2, step.eps, step.eps_inside_sqrt",
        "problem.loss, h, step.b2, step.b1, step.eps, step.eps_inside_sqrt",
        ("tests/test_optim.py::test_registry_builds_each_flow",),
        "the registry's Adam flow with b1 and b2 swapped",
    ),
    Mutant(
        "benchmark-global-errors",
        "driftlab/suites/flow_error/_runs.py",
        "result = dl.global_error(step, flow, y0, h, t_end, args, **options)",
        "result = dl.global_error(step, flow, y0, h, -t_end, args, **options)",
        (
            "tests/test_benchmarks.py::test_every_measurement_is_recorded",
            "tests/test_benchmarks.py::test_gd_against_igr_local_slope_is_three",
            "tests/test_benchmarks.py::test_measurements_inside_the_stable_region_succeed_with_"
            "their_orders",
        ),
        "every global measurement of the sweep failing (recorded, not raised)",
    ),
    Mutant(
        "example-games-flow",
        "driftlab/flows/_games.py",
        "return jtu.tree_map(lambda v, d: v - 0.5 * self.h * d, value, drift)",
        "return jtu.tree_map(lambda v, d: v - 0.25 * self.h * d, value, drift)",
        ("tests/test_examples.py::test_example_runs_quick[games]",),
        "the simultaneous game flow's h/2 as h/4, seen through the games example",
    ),
    Mutant(
        "docs-igr-loss",
        "driftlab/flows/_gradient.py",
        "return self.loss(y, args) + 0.25 * self.h * tree_vdot(g, g)",
        "return self.loss(y, args) + 0.5 * self.h * tree_vdot(g, g)",
        ("tests/test_docs.py::test_code_blocks_run[docs/index.md]",),
        "IGR's modified loss with h/2, seen through the getting-started page",
    ),
    # --- the newer modules (issue 28) ------------------------------------------------------
    Mutant(
        "central-velocity-half",
        "driftlab/flows/_central.py",
        "velocity=-(grad + 0.5 * rows.T @ x),",
        "velocity=-(grad + rows.T @ x),",
        ("tests/test_central_flow.py::test_sharpness_is_held_at_two_over_h",),
        "the central flow's velocity with the whole third-derivative term, not its half",
    ),
    Mutant(
        "sdcp-jacobian-sign",
        "driftlab/flows/_sdcp.py",
        "jacobian = jnp.eye(c.size, dtype=c.dtype) - _projection_jacobian(z, k) @ (",
        "jacobian = jnp.eye(c.size, dtype=c.dtype) + _projection_jacobian(z, k) @ (",
        (
            "tests/test_central_flow.py::test_sdcp_matches_projected_gradient_on_random_instances",
            "tests/test_central_flow.py::test_sdcp_closed_forms",
        ),
        "the SDCP Newton step with the projection's Jacobian of the wrong sign",
    ),
    Mutant(
        "sme-noise-centring",
        "driftlab/flows/_sme.py",
        "weights = jnp.mean(dw) - dw",
        "weights = -dw",
        ("tests/test_sme.py::test_noise_has_covariance_h_c_sigma",),
        "the SME noise built from uncentred unit gradients",
    ),
    Mutant(
        "weak-richardson-level",
        "driftlab/analysis/_weak.py",
        "fine = 2 * levels[:, 2] - levels[:, 1]",
        "fine = 2 * levels[:, 2] - levels[:, 0]",
        (
            "tests/test_weak_error.py::test_extrapolated_mean_and_solver_error_match_the_closed_form",
        ),
        "the fine Richardson level across two levels with the one-level formula",
    ),
    Mutant(
        "weak-solver-divisor",
        "driftlab/analysis/_weak.py",
        "2 * change_se) / 3)",
        "2 * change_se) / 7)",
        (
            "tests/test_weak_error.py::test_extrapolated_mean_and_solver_error_match_the_closed_form",
        ),
        "the solver-error estimate divided by 2^3 - 1 instead of 2^2 - 1",
    ),
    Mutant(
        "weak-stderr-samples",
        "driftlab/analysis/_weak.py",
        "sum() / flat.shape[0])",
        "sum() / flat.shape[1])",
        ("tests/test_weak_error.py::test_standard_error_is_that_of_the_mean_over_samples",),
        "the standard error over the test function's size instead of the samples",
    ),
    Mutant(
        "lanczos-second-pass",
        "driftlab/_lanczos.py",
        "    carry = jax.lax.fori_loop(0, filled, project_out, carry)",
        "    carry = jax.lax.fori_loop(0, 0, project_out, carry)",
        (
            "tests/test_lanczos.py::test_orthogonalise_twice_is_enough_for_a_nearly_dependent_"
            "vector",
        ),
        "one Gram-Schmidt pass instead of two",
    ),
    Mutant(
        "optax-burned-in-count",
        "driftlab/integrators/_layout.py",
        "BURNED_IN_COUNT = 2**30",
        "BURNED_IN_COUNT = 2**3",
        ("tests/test_optax.py::test_bias_correction_leaves_no_term_in_the_series",),
        "step counters held at 8 (bias corrections not yet 1) instead of burned in",
    ),
    Mutant(
        "region-gap-sign",
        "driftlab/integrators/_validity.py",
        "separated = self.slow - self.fast > GAP_TOLERANCE",
        "separated = self.fast - self.slow > GAP_TOLERANCE",
        ("tests/test_validity_regions.py::test_heavy_ball_flow_region_is_the_closed_form",),
        "the slow manifold said to exist where the fast modes dominate",
    ),
    Mutant(
        "pytree-expansion-leading-term",
        "driftlab/flows/_taylor.py",
        "tree_add(coefficients[0], g0),",
        "tree_add(g0, g0),",
        ("tests/test_modified_flow.py::test_euler_on_y_squared",),
        "the PyTree expansion's h-coefficient held at 2 G(y) instead of accumulated "
        "(c_{j,1} = j G(y); equivalent below order 3, where two iterates suffice)",
    ),
    Mutant(
        "gradient-flow-sign",
        "driftlab/flows/_gradient.py",
        "return jtu.tree_map(jnp.negative, grad(self.loss, y, args))",
        "return grad(self.loss, y, args)",
        ("tests/test_flows.py::test_gradient_flow_has_no_h_dependence_and_order_zero",),
        "gradient ascent as gradient flow",
    ),
    Mutant(
        "eos-progressive-sharpening",
        "driftlab/suites/eos/_measure.py",
        '"progressive_sharpening": bool(ratios[0] < 1 - HOVER_BAND and after[0] >= 1),',
        '"progressive_sharpening": bool(ratios[0] < 1 + HOVER_BAND and after[0] >= 1),',
        ("tests/test_eos_suite.py::test_verdict_rejects_what_is_not_the_edge_of_stability",),
        "the EoS suite counts a run that starts at the edge as progressive sharpening",
    ),
]


def _check(mutant: Mutant, root: str) -> str:
    """The file's text, after checking the mutant's `old` occurs exactly once in it."""
    with open(os.path.join(root, mutant.path)) as file:
        text = file.read()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name!r}: its line occurs {count} times in {mutant.path} (expected "
            "once); the code moved on, update the mutant."
        )
    return text


def _pytest(copy: str, tests, timeout: float) -> tuple[str, float, str]:
    command = [sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [*command, *tests], cwd=copy, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    lines = (result.stdout + result.stderr).strip().splitlines()
    return (
        ("passed" if result.returncode == 0 else "failed"),
        time.perf_counter() - start,
        (lines[-1] if lines else ""),
    )


def run(mutants, timeout: float, baseline: bool) -> dict:
    for mutant in mutants:
        _check(mutant, ROOT)
    records = []
    with tempfile.TemporaryDirectory(prefix="driftlab-mutants-") as scratch:
        copy = os.path.join(scratch, "tree")
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        if baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            status, seconds, summary = _pytest(copy, tests, timeout * len(mutants))
            print(f"baseline: {status} in {seconds:.0f}s ({summary})", file=sys.stderr)
            if status != "passed":
                raise SystemExit(f"the targeted tests fail unmutated: {summary}")
        for i, mutant in enumerate(mutants, 1):
            path = os.path.join(copy, mutant.path)
            original = _check(mutant, copy)
            try:
                with open(path, "w") as file:
                    file.write(original.replace(mutant.old, mutant.new))
                status, seconds, summary = _pytest(copy, mutant.tests, timeout)
            finally:
                with open(path, "w") as file:
                    file.write(original)
            outcome = {"failed": "killed", "passed": "survived", "timeout": "timed out"}[status]
            records.append(
                {
                    "name": mutant.name,
                    "file": mutant.path,
                    "what": mutant.what,
                    "tests": list(mutant.tests),
                    "outcome": outcome,
                    "seconds": seconds,
                    "pytest": summary,
                }
            )
            print(
                f"[{i}/{len(mutants)}] {mutant.name}: {outcome} ({seconds:.0f}s)", file=sys.stderr
            )
    caught = sum(r["outcome"] != "survived" for r in records)
    return {"mutants": records, "killed": caught, "total": len(records)}


def markdown(result: dict) -> str:
    rows = [
        [r["name"], f"`{r['file']}`", r["what"], r["outcome"], f"{r['seconds']:.0f}"]
        for r in result["mutants"]
    ]
    survivors = [r["name"] for r in result["mutants"] if r["outcome"] == "survived"]
    return "\n".join(
        [
            "# Mutation check",
            "",
            f"Last run: `{result['command']}`.",
            "",
            f"{result['killed']} of {result['total']} planted bugs caught"
            f"{'; survivors: ' + ', '.join(survivors) if survivors else ''}.",
            "",
            markdown_table(["mutant", "file", "bug", "outcome", "seconds"], rows),
            "",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mutation_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing results (replacing the mutants run) instead of overwriting",
    )
    parser.add_argument("--output", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = set(args.only or ()) - names
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; see --list")
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            _check(m, ROOT)
            print(f"{m.name:>24}  {m.path}: {m.what}  [{' '.join(m.tests)}]")
        return None
    start = time.perf_counter()
    result = run(mutants, args.timeout, not args.no_baseline)
    argv = sys.argv[1:] if argv is None else argv
    json_path = os.path.join(args.output, "mutation_check.json")
    if args.update and os.path.exists(json_path):
        with open(json_path) as file:
            previous = json.load(file)["mutants"]
        fresh = {r["name"]: r for r in result["mutants"]}
        order = [m.name for m in MUTANTS]
        merged = {r["name"]: r for r in previous if r["name"] in order} | fresh
        result["mutants"] = sorted(merged.values(), key=lambda r: order.index(r["name"]))
        result["killed"] = sum(r["outcome"] != "survived" for r in result["mutants"])
        result["total"] = len(result["mutants"])
    result.update(
        command=command_line("benchmarks.mutation_check", argv),
        seconds=time.perf_counter() - start,
        machine=machine_info(),
    )
    write_json_atomic(result, json_path)
    write_text_atomic(markdown(result), os.path.join(args.output, "mutation_check.md"))
    print(markdown(result))
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome and outcome["killed"] < outcome["total"] else 0)
