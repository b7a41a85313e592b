"""The benchmark sweep's smoke preset runs end to end and writes well-formed results.

No timing assertions: the numbers are checked for shape and sense, not speed.
"""

import json
import math

import pytest

import driftlab as dl
from benchmarks import performance
from driftlab.suites import flow_error


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    result = flow_error.run("smoke", str(output), argv=["--preset", "smoke"])
    return output, result


@pytest.mark.slow
def test_smoke_writes_json_markdown_and_figures(smoke):
    output, result = smoke
    on_disk = json.loads((output / "flow_error.json").read_text())
    assert on_disk == result
    assert on_disk["preset"] == "smoke"
    assert {"platform", "jax", "cpu_count"} <= set(on_disk["machine"])
    markdown = (output / "flow_error.md").read_text()
    assert markdown.startswith("# Flow approximation sweep")
    assert "| quadratic | gd | igr |" in markdown
    for name in on_disk["figures"]:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "flow_error_tracking.png" in on_disk["figures"]


@pytest.mark.slow
def test_every_measurement_is_recorded(smoke):
    _, result = smoke
    grid = result["scaled_steps"]
    for case in result["cases"]:
        assert case["lambda_max"] > 0
        assert set(case["stability_index"]) == {str(x) for x in grid}
        for flow in case["flows"].values():
            assert [m["h_lambda"] for m in flow["measurements"]] == grid
            for m in flow["measurements"]:
                for kind in ("local", "global"):
                    entry = m[kind]
                    assert m["failure"] or "failure" in entry or math.isfinite(entry["error"])


@pytest.mark.slow
def test_measurements_inside_the_stable_region_succeed_with_their_orders(smoke):
    # A sweep where every measurement recorded a failure would pass the test above. Inside
    # h lambda_max < 1 every flow of the smoke case applies, so every point there must be a
    # measurement, and each flow's fitted slopes must be its order + 2 (local), + 1 (global).
    _, result = smoke
    (case,) = result["cases"]
    assert set(case["flows"]) == {"gradient", "igr", "modified-2", "principal"}
    # The principal flow is GD's exact flow on a quadratic ((1/h) logm(I - hA), complex state
    # beyond h lambda = 1): every point, on both sides of 1 and of 2, is at round-off.
    principal = case["flows"].pop("principal")
    assert principal["complex_state"] and principal["tracks_up_to"] == max(result["scaled_steps"])
    for m in principal["measurements"]:
        assert m["failure"] is None
        for kind in ("local", "global"):
            assert m[kind]["relative_error"] < 1e-11 and m[kind]["at_floor"], (m["h_lambda"], kind)
    for name, flow in case["flows"].items():
        stable = [m for m in flow["measurements"] if m["h_lambda"] < 1]
        assert len(stable) == 4
        for m in stable:
            assert m["failure"] is None and m["order"] == flow["order"], name
            for kind in ("local", "global"):
                assert "failure" not in m[kind] and m[kind]["error"] > 10 * m[kind]["floor"]
        assert flow["expected"]["local"] == flow["order"] + 2, name
        assert flow["expected"]["global"] == flow["order"] + 1, name
        for kind in ("local", "global"):
            fitted = flow["fits"][kind]
            assert fitted["num_points"] >= 3, (name, kind)
            assert abs(fitted["slope"] - flow["expected"][kind]) < 0.3, (name, kind, fitted)


@pytest.mark.slow
def test_gd_against_igr_local_slope_is_three(smoke):
    _, result = smoke
    (case,) = [c for c in result["cases"] if (c["problem"], c["optimiser"]) == ("quadratic", "gd")]
    igr = case["flows"]["igr"]
    assert igr["expected"]["local"] == 3
    assert igr["fits"]["local"]["num_points"] >= 3
    assert abs(igr["fits"]["local"]["slope"] - 3) < 0.2
    assert abs(case["flows"]["gradient"]["fits"]["local"]["slope"] - 2) < 0.2
    assert case["drift"] and all("failure" not in d for d in case["drift"])


@pytest.mark.slow
def test_one_case_reruns_into_the_existing_results(smoke):
    output, result = smoke
    rerun = flow_error.run("smoke", str(output), figures=False, only=("quadratic/gd",))
    assert rerun["updated_cases"] == ["quadratic/gd"]
    assert [c["problem"] for c in rerun["cases"]] == [c["problem"] for c in result["cases"]]
    for old, new in zip(result["cases"], rerun["cases"]):
        for name, flow in old["flows"].items():
            errors = [m["global"] and m["global"].get("error") for m in flow["measurements"]]
            again = [
                m["global"] and m["global"].get("error") for m in new["flows"][name]["measurements"]
            ]
            assert errors == again, name
    assert set(rerun["figures"]) == set(result["figures"])
    with pytest.raises(dl.InputError, match="no case"):
        flow_error.run("smoke", str(output), only=("mlp/gd",))


def _no_flow(h):
    raise dl.InputError(f"no flow exists at h = {h}")


def test_failures_are_data_not_crashes():
    record = flow_error.measure(None, _no_flow, None, None, 0.1, 1.0, None)
    assert record["failure"].startswith("InputError: no flow exists")
    assert record["local"] is None and record["global"] is None


# --- benchmarks.performance at toy sizes: the pieces run and report sense, never speed --------


def _quiet(message):
    del message


@pytest.fixture(scope="module")
def solver_quadratic():
    return performance.solver_comparison("quadratic", 1, _quiet)


def test_performance_solver_comparison_matches_accuracy(solver_quadratic):
    result = solver_quadratic
    # scipy's tolerance was tuned until its error is within a decade of driftlab's.
    assert 0.1 < result["error_ratio"] < 10
    assert result["driftlab"]["relative_error"] < 1e-6
    assert result["driftlab"]["steps"] > 0 and result["scipy"]["field_evaluations"] > 0
    assert 0 < result["field_share_of_scipy_time"] and result["speedup"] > 0


@pytest.mark.slow
def test_performance_principal_and_modified_flow_sections(solver_quadratic):
    (row,) = performance.principal_scaling((1,), 1, _quiet)
    assert row["parameters"] == 85 and row["lanczos"]["field_compared_with"] == "dense"
    assert row["lanczos"]["field_relative_error"] < 0.05
    cost = performance.modified_flow_cost((2,), (1, 2, 3), 1, _quiet)
    assert [r["order"] for r in cost["rows"]] == [1, 2, 3]
    assert all(r["gradients"] > 0 for r in cost["rows"])
    assert set(cost["cost_exponent_in_p"]) == {str(cost["rows"][0]["parameters"])}
    # The report renders every section from what the run returns.
    order = {"gradient_seconds": 1e-4}
    for kind in ("local", "global"):
        order[kind] = dict.fromkeys(
            ["slope", "expected", "warm_seconds", "warm_gradients", "cold_seconds"], 1.0
        )
        order[kind]["cold_gradients"] = 1.0
    text = performance.markdown(
        {
            "command": "python -m benchmarks.performance",
            "machine": dl._io.machine_info(),
            "repeats": 1,
            "seconds": 1.0,
            "solver": [solver_quadratic],
            "order_of_accuracy": order,
            "principal": [row],
            "memory": [{"probe": "solve", "failure": "not run here"}],
            "modified_flow": cost,
        }
    )
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5."):
        assert heading in text
