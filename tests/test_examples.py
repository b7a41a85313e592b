"""Every gallery example runs end to end on a reduced size and writes its figures and verdict."""

import json
import pathlib
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(
    path.stem for path in (ROOT / "examples").glob("*.py") if not path.stem.startswith("_")
)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_quick(name, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["verdict"] in ("reproduced", "partly reproduced", "not reproduced")
    assert report["checks"] and f"verdict: {report['verdict']}" in result.stdout
    assert list(tmp_path.glob("*.png")), "an example must draw its figures"
