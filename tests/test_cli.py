"""The `driftlab` command: the demo, `order`, and how wrong arguments are reported.

Bad values run in-process through `cli.main` and must fail before anything is compiled
(`order_of_accuracy` is replaced by a function that fails the test if it is reached).
"""

import json
import os
import stat
import subprocess
import sys

import pytest

import driftlab as dl
from driftlab import _registry, analysis, cli
from driftlab._io import write_json_atomic
from driftlab.cli import _order


def _main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit:  # argparse's errors and --help
        return exit.code


@pytest.fixture
def nothing_measured(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a bad value reached the measurement")

    monkeypatch.setattr(analysis, "order_of_accuracy", fail)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _error_line(capsys, *, after_progress=False) -> str:
    """The one line of stderr; with `after_progress`, the last line after progress lines."""
    captured = capsys.readouterr()
    *progress, line = captured.err.rstrip("\n").splitlines()
    assert all(p.startswith("  [") for p in progress) if after_progress else not progress, (
        captured.err
    )
    return line


@pytest.mark.slow
def test_demo_prints_the_slopes_and_writes_json_and_png(tmp_path):
    assert cli.main(["demo", "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    slopes = {(e["kind"], e["flow"]): e["slope"] for e in data["estimates"]}
    assert slopes[("local", "GradientFlow")] == pytest.approx(2, abs=0.2)
    assert slopes[("local", "IGRFlow")] == pytest.approx(3, abs=0.2)
    assert slopes[("global", "GradientFlow")] == pytest.approx(1, abs=0.2)
    assert slopes[("global", "IGRFlow")] == pytest.approx(2, abs=0.2)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert data["command_line"] == f"driftlab demo --output {tmp_path}"
    assert (data["problem"], data["optimiser"], data["seed"]) == ("mlp", "gd", 0)


@pytest.mark.slow
def test_order_json_is_the_results_file_with_its_metadata(tmp_path, umask_022):
    out = tmp_path / "elsewhere" / "q.json"
    argv = ["order", "--problem", "quadratic", "--optimiser", "heavy-ball", "--flow"]
    argv += ["heavy-ball", "--num", "3", "--h-min", "0.01", "--h-max", "0.04", "--seed", "3"]
    argv += ["--hyper", "beta=0.25", "--json", str(out), "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert data == json.loads((tmp_path / "order.json").read_text())
    assert data["command_line"] == "driftlab " + " ".join(argv)
    assert (data["problem"], data["optimiser"], data["seed"]) == ("quadratic", "heavy-ball", 3)
    assert data["hyperparameters"] == {"beta": 0.25}
    assert data["flows"] == ["heavy-ball"] and data["h"] == pytest.approx([0.01, 0.02, 0.04])
    for library in ("driftlab", "jax", "equinox", "diffrax", "optax"):
        assert data["machine"][library], library
    (estimate,) = data["estimates"]
    assert estimate["flow"] == "HeavyBallFlow" and estimate["slope"] == pytest.approx(3, abs=0.15)
    for path in (out, tmp_path / "order.json", tmp_path / "order.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "order.json", "order.png"]


def test_results_take_the_umask_like_any_new_file(tmp_path):
    previous = os.umask(0o027)
    try:
        write_json_atomic({"a": 1}, str(tmp_path / "r.json"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--problem", "mpl"], "unknown problem 'mpl'. Did you mean 'mlp'?"),
        (["--flow", "igg"], "unknown flow 'igg'. Did you mean 'igr'?"),
        (["--optimiser", "adma"], "unknown optimiser 'adma'. Did you mean 'adam'?"),
        (["--num", "2"], "argument --num: must be at least 3 to fit a slope, got '2'"),
        (["--h-min", "x"], "argument --h-min: invalid float value: 'x'"),
        # step ranges: zero, negative, not finite, inverted, empty
        (["--h-max", "0"], "argument --h-max: must be finite and > 0, got '0'"),
        (["--h-min", "-0.1"], "argument --h-min: must be finite and > 0, got '-0.1'"),
        (["--h-min", "nan"], "argument --h-min: must be finite and > 0, got 'nan'"),
        (["--h-min", "0.5", "--h-max", "0.1"], "`--h-min` (0.5) must be smaller than `--h-max`"),
        (["--h-min", "0.1", "--h-max", "0.1"], "`--h-min` (0.1) must be smaller than `--h-max`"),
        (["--t-end", "-1"], "argument --t-end: must be finite and > 0"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["--order", "-1"], "argument --order: must be >= 0"),
        # malformed or out-of-range --hyper values
        (["--optimiser", "heavy-ball", "--hyper", "beta=abc"], "`beta` of heavy-ball must be a"),
        (["--optimiser", "heavy-ball", "--hyper", "beta"], "`--hyper beta`: write each setting"),
        (["--optimiser", "heavy-ball", "--hyper", "=0.5"], "write each setting as KEY=VALUE"),
        (["--optimiser", "heavy-ball", "--hyper", "beta=-0.5"], "must be in [0, 1), got '-0.5'"),
        (["--optimiser", "heavy-ball", "--hyper", "beta=2"], "must be in [0, 1), got '2'"),
        (["--optimiser", "nesterov", "--hyper", "beta=1"], "must be in [0, 1), got '1'"),
        (["--optimiser", "adam", "--hyper", "b2=1.5"], "`b2` of adam must be in [0, 1)"),
        (["--optimiser", "adam", "--hyper", "eps=-1e-8"], "`eps` of adam must be finite and >="),
        (["--optimiser", "rmsprop", "--hyper", "eps_inside_sqrt=2"], "is a flag: pass 1 or 0"),
        (["--optimiser", "sgd-epoch", "--hyper", "num_batches=2.5"], "must be an integer"),
        (["--optimiser", "sgd-epoch", "--hyper", "num_batches=0"], "must be an integer >= 1"),
        (["--optimiser", "heavy-ball", "--hyper", "beta=0.5", "beta=0.6"], "sets 'beta' twice"),
        # keys the optimiser does not take
        (["--hyper", "nonsense=1"], "optimiser 'gd' takes no hyperparameters, got 'nonsense'"),
        (["--hyper", "beta=2"], "optimiser 'gd' takes no hyperparameters, got 'beta'"),
        (
            ["--optimiser", "heavy-ball", "--hyper", "bta=0.5"],
            "unknown 'heavy-ball' hyperparameter 'bta'. Did you mean 'beta'?",
        ),
        (
            ["--optimiser", "adam", "--hyper", "eps_insde_sqrt=1"],
            "unknown 'adam' hyperparameter 'eps_insde_sqrt'. Did you mean 'eps_inside_sqrt'?",
        ),
        # optimiser, flow and problem that do not belong together
        (["--optimiser", "gd", "--flow", "adam"], "flow 'adam' is not a flow of optimiser 'gd'"),
        (["--optimiser", "heavy-ball", "--flow", "igr"], "flow 'igr' is not a flow of optimiser"),
        (["--optimiser", "sgd-epoch", "--problem", "quadratic"], "does not run on problem"),
        (["--problem", "game"], "optimiser 'gd' does not run on problem 'game'"),
        (["--optimiser", "simultaneous-gd"], "'simultaneous-gd' does not run on problem 'mlp'"),
    ],
)
def test_bad_values_exit_2_with_one_line_before_measuring(
    tmp_path, capsys, nothing_measured, arguments, message
):
    assert _main(["order", *arguments, "--output", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert message in line
    assert line.startswith("driftlab")
    assert not any(tmp_path.iterdir())


def test_a_problem_sized_bound_is_an_input_error(tmp_path, capsys, nothing_measured):
    argv = ["order", "--optimiser", "sgd-epoch", "--flow", "sgd", "--problem", "logistic"]
    assert _main([*argv, "--hyper", "num_batches=1000", "--output", str(tmp_path)]) == 2
    assert "`num_batches` must lie in [1, 256], got 1000" in _error_line(capsys)


def test_unknown_command_exits_2_in_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "driftlab.cli", "orde"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_measurement_error_exits_2_with_one_line(tmp_path, capsys):
    # Local errors ~h^3 ~ 1e-27 lie far below the round-off floor: nothing to fit.
    argv = ["order", "--problem", "quadratic", "--flow", "igr", "--num", "3"]
    assert _main([*argv, "--h-min", "1e-9", "--h-max", "1e-8", "--output", str(tmp_path)]) == 2
    line = _error_line(capsys, after_progress=True)
    assert line.startswith("driftlab: measurement failed (MeasurementError): only 0 of 3")


# Outside the CLI the warning would only be shown: the CLI itself must make it an error.
@pytest.mark.filterwarnings("ignore::driftlab.StabilityWarning")
def test_a_stability_warning_is_an_error_in_the_cli(tmp_path, capsys):
    # The quadratic's lambda_max is 1: h = 2.5 is beyond GD's edge of stability.
    argv = ["order", "--problem", "quadratic", "--flow", "igr", "--num", "3"]
    assert _main([*argv, "--h-min", "0.5", "--h-max", "2.5", "--output", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("driftlab: measurement failed (StabilityWarning): h = 2.5 is beyond")
    assert not any(tmp_path.iterdir())


def test_heavy_ball_without_a_slow_manifold_exits_2(tmp_path, capsys):
    # beta = 0.99: the slow manifold needs h * lambda < (1 - sqrt(beta))^2 = 2.5e-5.
    argv = ["order", "--problem", "quadratic", "--optimiser", "heavy-ball", "--flow"]
    argv += ["heavy-ball", "--hyper", "beta=0.99", "--num", "3", "--output", str(tmp_path)]
    assert _main(argv) == 2
    assert _error_line(capsys, after_progress=True).startswith("driftlab: measurement failed")


def test_any_driftlab_error_in_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise dl.MeasurementError("the solve failed:\n  too many steps")

    monkeypatch.setattr(analysis, "order_of_accuracy", fail)
    argv = ["order", "--problem", "quadratic", "--flow", "igr", "--output", str(tmp_path)]
    assert _main(argv) == 2
    assert _error_line(capsys).endswith("the solve failed: too many steps")


def test_help_gives_every_default_and_every_setting(capsys):
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.choices and "order" in a.choices]
    for name, subparser in commands.choices.items():
        formatter = subparser._get_formatter()
        for action in subparser._actions:
            if action.dest != "help":
                text = formatter._get_help_string(action)
                assert "default" in text, (name, action.dest)
    assert _main(["order", "--help"]) == 0
    text = capsys.readouterr().out
    for name, optimiser in _registry.OPTIMISERS.items():
        assert f"  {name}\n" in text
        for key, spec in optimiser.hyperparameters.items():
            assert f"{key}={spec.default!r}: {spec.meaning} ({spec.allowed})" in text


def test_registry_declarations_name_registered_problems_and_flows():
    for name, optimiser in _registry.OPTIMISERS.items():
        assert optimiser.name == name
        assert set(optimiser.problems) <= set(_registry.PROBLEMS), name
        assert set(optimiser.flows) <= set(_registry.FLOWS), name
        for key, spec in optimiser.hyperparameters.items():
            assert spec.parse(key, spec.default) == spec.default, (name, key)


def test_registry_checks_hyperparameters_from_python_too():
    problem = _registry.PROBLEMS["quadratic"]()
    with pytest.raises(dl.InputError, match=r"`beta` of heavy-ball must be in \[0, 1\)"):
        _registry.OPTIMISERS["heavy-ball"](problem, {"beta": 2.0})
    step, _, _ = _registry.OPTIMISERS["adam"](problem, {"eps_inside_sqrt": 1.0, "b2": "0.5"})
    assert step.eps_inside_sqrt is True and float(step.b2) == 0.5 and float(step.b1) == 0.9


@pytest.mark.slow  # about 8 s of compilation on an idle core, more on a loaded one
def test_the_tables_note_states_the_fit_rule_the_tables_follow(tmp_path, capsys):
    # The note under the tables says a point is used when its error is at least
    # FLOOR_MARGIN times its floor: every row of the written results must obey it.
    argv = ["order", "--problem", "quadratic", "--num", "3", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    tables, _, rest = out.partition(_order.TABLE_NOTE)
    assert "floor" in tables and rest.lstrip().startswith("fitted orders:")
    assert f"{analysis._order.FLOOR_MARGIN:g}x its floor" in " ".join(_order.TABLE_NOTE.split())
    for estimate in json.loads((tmp_path / "order.json").read_text())["estimates"]:
        for error, floor, used in zip(estimate["errors"], estimate["floors"], estimate["used"]):
            assert used == (error >= analysis._order.FLOOR_MARGIN * floor)


@pytest.mark.parametrize("command", [["demo"], ["order"], ["bench"], ["weak"]])
@pytest.mark.parametrize("where", ["a file", "/proc/nope"])
def test_an_unwritable_output_exits_2_before_computing(
    tmp_path, capsys, nothing_measured, command, where
):
    if where == "a file":
        where = str(tmp_path / "results.json")
        open(where, "w").close()
    elif not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    assert _main([*command, "--output", where]) == 2
    line = _error_line(capsys)
    assert line.startswith("driftlab: error: `--output`")
    assert "is a file" in line or "cannot be written" in line
