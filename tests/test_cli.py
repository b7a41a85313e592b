"""The `driftlab` command: the demo, `order`, and how wrong arguments are reported."""

import json
import subprocess
import sys

import pytest

from driftlab import cli


def _run(*arguments, cwd):
    return subprocess.run(
        [sys.executable, "-m", "driftlab.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_demo_prints_the_slopes_and_writes_json_and_png(tmp_path):
    assert cli.main(["demo", "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    slopes = {(e["kind"], e["flow"]): e["slope"] for e in data["estimates"]}
    assert slopes[("local", "GradientFlow")] == pytest.approx(2, abs=0.2)
    assert slopes[("local", "IGRFlow")] == pytest.approx(3, abs=0.2)
    assert slopes[("global", "GradientFlow")] == pytest.approx(1, abs=0.2)
    assert slopes[("global", "IGRFlow")] == pytest.approx(2, abs=0.2)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "machine" in data


def test_order_writes_the_requested_json(tmp_path):
    out = tmp_path / "q.json"
    status = cli.main(
        [
            "order",
            "--problem",
            "quadratic",
            "--flow",
            "igr",
            "--num",
            "4",
            "--h-min",
            "0.02",
            "--h-max",
            "0.2",
            "--json",
            str(out),
            "--output",
            str(tmp_path),
        ]
    )
    assert status == 0
    (estimate,) = json.loads(out.read_text())
    assert estimate["flow"] == "IGRFlow" and estimate["slope"] == pytest.approx(3, abs=0.15)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["order", "--problem", "mpl"], "unknown problem 'mpl'. Did you mean 'mlp'?"),
        (["order", "--flow", "igg"], "unknown flow 'igg'. Did you mean 'igr'?"),
        (["order", "--optimiser", "adma"], "unknown optimiser 'adma'. Did you mean 'adam'?"),
        (["order", "--num", "2"], "`--num` must be at least 3"),
        (["order", "--h-min", "x"], "invalid float value"),
        (["orde"], "invalid choice"),
    ],
)
def test_wrong_arguments_exit_2_with_one_line(tmp_path, arguments, message):
    result = _run(
        *arguments, "--output" if arguments[0] == "order" else "", str(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
