"""The edge-of-stability suite: the smoke preset end to end, the verdict logic on known series."""

import json
import os
import shutil
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab.cli import build_parser, main
from driftlab.suites import eos, flow_error
from driftlab.suites._output import write_text_atomic


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output = tmp_path_factory.mktemp("eos")
    return output, eos.run("smoke", str(output), argv=["--preset", "smoke"])


@pytest.mark.slow
def test_smoke_writes_json_markdown_and_figures(smoke):
    output, result = smoke
    on_disk = json.loads((output / "eos.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert (output / "eos.md").read_text().startswith("# Edge-of-stability suite (smoke)")
    assert result["figures"]
    for name in result["figures"]:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_records_are_consistent(smoke):
    _, result = smoke
    (case,) = eos.presets()["smoke"]
    gd_only, windowed = result["runs"]
    ((h, num_steps),) = case.gd_only
    assert [gd_only["h"], windowed["h"]] == [h, *case.hs]
    assert [len(gd_only["losses"]), len(windowed["losses"])] == [num_steps, case.num_steps]
    for run in result["runs"]:
        for point in run["checkpoints"][:-1]:
            # The loss at a checkpoint is the loss GD's scan saw before that step's update.
            assert point["loss"] == pytest.approx(run["losses"][point["step"]], rel=1e-12)
        crossed = [p["step"] for p in run["checkpoints"] if p["sharpness"] >= 2 / run["h"]]
        assert run["onset_step"] == (crossed[0] if crossed else None)
    assert not any(gd_only["windows"].values())
    for windows in windowed["windows"].values():
        assert windows and all("failure" not in w for w in windows)
        for w in windows:
            assert w["phase"] == "before" or w["start"] >= windowed["onset_step"]


@pytest.mark.slow
def test_initial_sharpness_is_the_dense_top_eigenvalue(smoke):
    _, result = smoke
    (case,) = eos.presets()["smoke"]
    problem = case.make_problem()
    flat, unravel = ravel_pytree(problem.params)
    hessian = jax.hessian(lambda x: problem.loss(unravel(x), problem.data))(flat)
    top = np.linalg.eigvalsh(np.asarray(hessian))[-1]
    assert result["runs"][0]["checkpoints"][0]["sharpness"] == pytest.approx(top, rel=1e-8)


@pytest.mark.slow
def test_below_eos_igr_follows_gd_better_than_gradient_flow(smoke):
    # Backward error analysis: IGR's window error is O(h^2) per unit time, gradient flow's O(h).
    _, result = smoke
    windows = result["runs"][-1]["windows"]
    for gradient, igr in zip(windows["gradient"], windows["igr"]):
        assert gradient["phase"] == "before"
        assert igr["relative_distance"] < 0.5 * gradient["relative_distance"]


@pytest.mark.slow
def test_case_option_reruns_one_case_into_the_existing_results(smoke, tmp_path):
    output, result = smoke
    shutil.copytree(output, tmp_path, dirs_exist_ok=True)
    eos.main(["--preset", "smoke", "--case", "fc-digits", "--output", str(tmp_path)])
    merged = json.loads((tmp_path / "eos.json").read_text())
    assert merged["command"].startswith(result["command"] + " ; ")
    assert "--case fc-digits" in merged["command"]
    # GD and its sharpness are deterministic on the CPU: the rerun reproduces them.
    for before, after in zip(result["runs"], merged["runs"], strict=True):
        assert after["losses"] == before["losses"]
        assert after["checkpoints"] == before["checkpoints"]
    assert merged["command"] in (tmp_path / "eos.md").read_text()


def _synthetic_run(
    ratios, losses, gradient_before, gradient_after, flow_sharpness=1.5, h=0.1, every=10
):
    steps = every * np.arange(len(ratios))
    onset = next((int(s) for s, r in zip(steps, ratios) if r >= 1), None)
    windows = [{"phase": "before", "average_distance": d} for d in gradient_before]
    windows += [
        {"phase": "after", "average_distance": d, "flow_sharpness_ratio": flow_sharpness}
        for d in gradient_after
    ]
    return {
        "h": h,
        "checkpoints": [
            {"step": int(s), "sharpness": 2 * r / h, "midpoint_sharpness": 2 * min(r, 1.0) / h}
            for s, r in zip(steps, ratios)
        ],
        "onset_step": onset,
        "losses": list(losses),
        "windows": {"gradient": windows},
    }


def test_verdict_recognises_the_edge_of_stability():
    ratios = [0.5, 0.7, 0.9, 1.02, 0.97, 1.05, 1.0, 0.99]
    losses = np.linspace(1.0, 0.1, 80)
    verdict = eos.verdicts(_synthetic_run(ratios, losses, [0.01, 0.02], [0.2, 0.3]))
    assert verdict["reached_eos"] and verdict["progressive_sharpening"]
    assert verdict["hovering"] and verdict["midpoint_hovering"] and verdict["loss_still_falls"]
    assert verdict["gradient_flow_factor"] == pytest.approx(0.25 / 0.015)
    assert verdict["gradient_flow_leaves"] and verdict["gradient_flow_sharpens_past_2/h"]
    both = eos.overall_verdict(
        [{"verdict": verdict}, {"verdict": eos.verdicts(_synthetic_run(ratios, losses, [], [0.2]))}]
    )
    assert both["gradient_flow_leaves"] and both["measured_on"]["gradient_flow_leaves"] == "1/2"


def test_verdict_rejects_what_is_not_the_edge_of_stability():
    # Starts at the edge (no sharpening), overshoots 2/h by 30%, loss rises, GF keeps tracking.
    ratios = [1.0, 1.3, 1.3, 1.25, 1.3]
    losses = np.linspace(0.1, 1.0, 50)
    verdict = eos.verdicts(_synthetic_run(ratios, losses, [0.01], [0.02], flow_sharpness=1.05))
    assert not verdict["progressive_sharpening"]
    assert not verdict["hovering"]
    # The midpoints of a period-2 orbit may hover where the iterates do not.
    assert verdict["midpoint_hovering"]
    assert not verdict["loss_still_falls"]
    assert not verdict["gradient_flow_leaves"]
    assert not verdict["gradient_flow_sharpens_past_2/h"]
    never = eos.verdicts(_synthetic_run([0.2, 0.5, 0.8], np.ones(30), [0.1], []))
    assert never == {"reached_eos": False, "initial_ratio": 0.2}
    assert eos.overall_verdict([{"verdict": never}])["hovering"] is False
    # A finding not measured on a run (no window before its onset) is judged on the others.
    runs = [{"verdict": verdict}, {"verdict": eos.verdicts(_synthetic_run(ratios, losses, [], []))}]
    overall = eos.overall_verdict(runs)
    assert overall["measured_on"]["gradient_flow_leaves"] == "1/2"
    assert overall["gradient_flow_leaves"] is False and overall["hovering"] is False
    unmeasured = eos.overall_verdict(runs[1:])
    assert unmeasured["gradient_flow_leaves"] is False
    assert unmeasured["measured_on"]["gradient_flow_leaves"] == "0/1"


def test_oscillation_starts_where_the_loss_first_rises_after_onset():
    losses = [5.0, 4.0, 4.5, 3.0, 2.0, 1.9, 1.95, 1.0]
    assert eos.oscillation_step(losses, None) is None
    assert eos.oscillation_step(losses, 0) == 1  # losses[2] > losses[1]
    assert eos.oscillation_step(losses, 3) == 5  # losses[6] > losses[5]
    assert eos.oscillation_step(losses, 7) is None


def test_windows_before_onset_end_before_it_and_the_others_start_from_onset():
    case = eos.Case("x", None, (0.1,), num_steps=1000, every=50, window=100, windows_per_phase=3)
    checkpoints = [{"step": s} for s in range(0, 1001, 50)]
    before, after = eos.window_starts(checkpoints, 600, case)
    assert before == [150, 350, 500] and after == [600, 750, 900]
    before, after = eos.window_starts(checkpoints, 600, case, window=40, first_after=730)
    assert before == [150, 350, 550] and after == [750, 850, 950]
    before, after = eos.window_starts(checkpoints, None, case)
    assert before == [200, 550, 900] and after == []


def test_cli_selects_the_suite():
    args = build_parser().parse_args(["bench", "--suite", "eos", "--preset", "smoke"])
    assert (args.suite, args.preset) == ("eos", "smoke")
    assert build_parser().parse_args(["bench"]).suite == "flows"


def _quadratic(params, data):
    return 0.5 * params @ (data["a"] * params)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gradient", "central"])
def test_window_distances_on_a_quadratic_match_the_closed_forms(kind):
    # L = w^T A w / 2 below the edge (h * 10 = 1 < 2): GD is (I - hA)^n w0, gradient flow
    # exp(-tA) w0, and the central flow (X = 0 there) by Euler with step h/4 is
    # (I - hA/4)^(4n) w0; the Hessian is A everywhere, so both endpoint sharpnesses are
    # h * 10 / 2.
    a = jnp.array([1.0, 3.0, 10.0])
    w0 = jnp.array([1.0, -2.0, 0.5])
    problem = dl.problems.Problem(name="quadratic", loss=_quadratic, params=w0, data={"a": a})
    h, length = 0.1, 12
    case = eos.Case("quadratic", None, (h,), window=length, width=1.0)
    step = dl.GradientDescent(problem.loss)
    if kind == "central":
        make = lambda h: (dl.CentralFlow(problem.loss, h, k=1), "central")
        flow_end = (1 - h * a / eos.CENTRAL_SUBSTEPS) ** (eos.CENTRAL_SUBSTEPS * length) * w0
    else:
        make = eos.flow_factories(problem, step, 1)["gradient"]
        flow_end = jnp.exp(-length * h * a) * w0
    record = eos.measure_window(problem, step, make, w0, h, case)
    gd_end = (1 - h * a) ** length * w0
    distance = float(jnp.linalg.norm(flow_end - gd_end))
    assert record["distance"] == pytest.approx(distance, rel=1e-5)
    assert record["norm_distance"] == pytest.approx(distance / float(jnp.linalg.norm(w0)), rel=1e-5)
    assert record["flow_sharpness_ratio"] == pytest.approx(h * 10 / 2, rel=1e-10)
    assert record["gd_sharpness_ratio"] == pytest.approx(h * 10 / 2, rel=1e-10)
    assert record["flow_loss"] == pytest.approx(float(_quadratic(flow_end, problem.data)), rel=1e-5)


def test_a_rerun_case_replaces_only_its_own_runs_in_preset_order():
    def result(preset, command, runs, seconds, cpu, load):
        return {
            "preset": preset,
            "command": command,
            "machine": {"cpu_count": len(command)},
            "runs": runs,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "load_average": load,
        }

    def one(problem, h, seconds, cpu):
        return {"problem": problem, "h": h, "seconds": seconds, "cpu_seconds": cpu}

    earlier = result(
        "fast", "all", [one("a", 1, 10, 8), one("b", 1, 20, 15), one("b", 2, 30, 25)], 60, 50, 1.5
    )
    rerun = result("fast", "just b", [one("b", 3, 7, 5)], 7, 5, 3.0)
    merged = eos.replace_runs(earlier, rerun, ["b", "a"])
    assert [(r["problem"], r["h"]) for r in merged["runs"]] == [("b", 3), ("a", 1)]
    assert merged["seconds"] == 60 - 50 + 7 and merged["cpu_seconds"] == 50 - 40 + 5
    assert merged["command"] == "all ; just b" and merged["load_average"] == 3.0
    assert merged["machine"] == rerun["machine"]
    added = eos.replace_runs(earlier, result("fast", "c", [one("c", 1, 4, 3)], 4, 3, 1.0), "acb")
    assert [r["problem"] for r in added["runs"]] == ["a", "c", "b", "b"]
    assert added["seconds"] == 64 and added["cpu_seconds"] == 53
    with pytest.raises(dl.InputError, match="preset"):
        eos.replace_runs(earlier, result("smoke", "x", [], 0, 0, 0), ["a", "b"])
    with pytest.raises(dl.InputError, match="only"):
        eos.run("fast", "/nonexistent", only="no-such-case")


def _verdict_of(reached_runs, total, holds=(), fails=(), unmeasured=()):
    keys = ["progressive_sharpening", "hovering", "gradient_flow_leaves"]
    verdict = {"runs_reaching_eos": f"{reached_runs}/{total}"}
    verdict |= {key: key in holds for key in keys}
    verdict["measured_on"] = {
        key: f"{0 if key in unmeasured else reached_runs}/{reached_runs}" for key in keys
    }
    return verdict


def test_the_summary_says_in_words_what_a_smoke_run_shows():
    smoke = {"preset": "smoke", "verdict": _verdict_of(0, 2)}
    text = " ".join(eos.summary(smoke).split())
    assert text.startswith("0 of 2 runs reached the edge of stability")
    assert "No finding could be measured" in text
    assert eos.PRESET_GUIDE["smoke"][1] in text and "--preset fast" in text
    # Outside the smoke preset a run that never reaches the edge is not "as expected".
    assert "As expected" not in eos.summary({"preset": "fast", "verdict": _verdict_of(0, 5)})


def test_the_summary_lists_the_findings_that_hold_and_fail_where_measured():
    verdict = _verdict_of(
        3, 5, holds=("progressive_sharpening",), unmeasured=("gradient_flow_leaves",)
    )
    text = " ".join(eos.summary({"preset": "fast", "verdict": verdict}).split())
    assert text.startswith("3 of 5 runs reached the edge of stability")
    assert "hold on every run at the edge: progressive_sharpening." in text
    # Hovering was measured and failed; the unmeasured finding is in neither list.
    assert "fail on some run: hovering." in text
    assert "gradient_flow_leaves" not in text


def test_bench_help_gives_every_presets_running_time(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for suite, guide in (("flows", flow_error.PRESET_GUIDE), ("eos", eos.PRESET_GUIDE)):
        assert f"--suite {suite}" in text
        for preset, (duration, purpose) in guide.items():
            assert f"{preset} {duration}: {purpose}" in text


@pytest.mark.parametrize("suite", ["flows", "eos"])
def test_bench_case_without_earlier_results_is_one_line_before_running(suite, tmp_path, capsys):
    argv = ["bench", "--suite", suite, "--preset", "smoke", "--case", "x", "--output"]
    assert main([*argv, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftlab: error: `--case x` reruns one case") and "\n" not in err
    assert "run the whole preset there first" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "suite, results, named",
    [("flows", "flow_error.json", "quadratic/gd"), ("eos", "eos.json", "fc-digits")],
)
def test_bench_case_names_the_presets_cases_when_unknown(suite, results, named, tmp_path, capsys):
    (tmp_path / results).write_text("{}")
    argv = ["bench", "--suite", suite, "--preset", "smoke", "--case", "nope", "--output"]
    assert main([*argv, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftlab: error:") and named in err


def test_text_reports_replace_the_old_file_whole_with_the_mode_of_any_new_file(tmp_path):
    path = tmp_path / "new" / "eos.md"
    write_text_atomic("first\n", str(path))
    write_text_atomic("second\n", str(path))
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.read_text() == "second\n" and os.listdir(path.parent) == ["eos.md"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
