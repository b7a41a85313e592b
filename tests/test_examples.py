"""Every gallery example runs end to end on a reduced size (`--quick`), writes its figures, and
reaches its documented verdict with its headline number, or, where the reduced size changes
them, what theory predicts for the reduced size (said per example below)."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(
    path.stem for path in (ROOT / "examples").glob("*.py") if not path.stem.startswith("_")
)


def _documented_verdict(name: str) -> str:
    page = (ROOT / "docs" / "gallery" / f"{name.replace('_', '-')}.md").read_text()
    (verdict,) = re.findall(r"\*\*Verdict: ([a-z ]+?)\.?\*\*", page)
    return verdict


def _failed(report) -> set[str]:
    return {check for check, held in report["checks"].items() if not held}


def _igr(report, numbers):
    # Docs: the IGR flow predicts GD's loss 8x more closely than gradient flow (t = 40). Gradient
    # flow misses GD by O(h), the order-1 IGR flow by O(h^2): at h lambda_max = 1.2 the ratio is
    # a few times; the quick run (t = 4, 128 samples) measures 6.8x. Assert at least half 8x.
    errors = numbers["prediction_errors_max_over_time"]
    assert errors["gradient flow"]["loss"] > 4 * errors["IGR flow"]["loss"]
    assert errors["gradient flow"]["grad_norm_sq"] > errors["IGR flow"]["grad_norm_sq"]


def _games(report, numbers):
    # Closed forms on the bilinear game phi * theta (start (1, 0)): simultaneous GD multiplies the
    # norm by sqrt(1 + h^2) every step (docs: 4.448 at t = 30), its order-1 flow
    # (theta' = A theta + h/2 theta) by e^{h t / 2} (docs: 4.482); the order-0 flow rotates.
    h, t_end = numbers["h"], numbers["t_end"]
    ratios = numbers["bilinear"]["final_norm_over_initial"]
    assert ratios["simultaneous GD"] == pytest.approx((1 + h**2) ** (t_end / h / 2), rel=1e-9)
    assert ratios["simultaneous flow (order 1)"] == pytest.approx(math.exp(h * t_end / 2), 1e-6)
    assert ratios["order-0 flow"] == pytest.approx(1.0, rel=1e-6)


def _drift_cancellation(report, numbers):
    # The corrected loss at order 1 is L - h/4 |grad L|^2 exactly (docs: to better than 1e-10),
    # and g_0, g_1 are gradient fields (asymmetry at round-off, docs: 1.8e-16 and 4.7e-16).
    assert numbers["order1_corrected_loss"] == pytest.approx(
        numbers["order1_closed_form_loss"], rel=1e-10
    )
    assert max(numbers["order1_relative_asymmetry"]) < 1e-12
    # Quick mode stops at order 2 (order 3 compiles for minutes), so the docs' "order-3 stays
    # 10x closer" check cannot hold: at h lambda_max = 1 the truncated e^{-x} leaves x^{p+2}
    # terms of 1/2, 1/6, 1/24 for p = 0, 1, 2 (measured: 7x closer at order 2, 11x at order 3).
    # What holds at any size: each order is closer to gradient flow than the one before.
    summary = numbers["summary"]
    distances = [summary[label]["max_distance_to_gradient_flow"] for label in summary]
    assert numbers["orders"] == [1, 2] and np.all(np.diff(distances) < 0)
    assert _failed(report) == {"GD + order-2 correction stays 10x closer than plain GD"}


def _principal_flow(report, numbers):
    # GD's iterates lie exactly on the principal flow on a quadratic, on both sides of 1/lambda
    # and 2/lambda (docs: max relative error 1.2e-9 and 3.7e-9): the solver's tolerance sets it.
    for case in numbers["quadratic"].values():
        assert case["max_relative_error"]["principal flow"] < 1e-8
    # Documented: on the MLP the principal flow is closer to GD after one step but not at the
    # end. Quick mode (64 samples, 40 steps) adds one more failure: DAL's loss is monotone only
    # on quadratics (Cauchy-Schwarz); on this small MLP it spikes once above its start before
    # ending lower, as the fixed step does not. Both failures are about the MLP, none about the
    # exact claims.
    mlp_end = "MLP, h lambda_max = 1.5: the principal flow is closer to GD than gradient flow and "
    assert _failed(report) <= {
        mlp_end + "IGR at the end",
        "DAL: the drift-adjusted run never rises above its start and ends lower",
    }
    dal = numbers["dal"]["final_loss"]
    assert dal["GD with DAL (cap h)"] < dal["GD, fixed h"]


def _sgd(report, numbers):
    # The SGD flow is order 1 for the order-averaged epoch: halving h divides its global error
    # by ~4 (docs: x3.18); the IGR flow with step h is order 0 there: ~2 (docs: x2.07).
    ratios = numbers["error_ratio_when_halving_h"]
    assert 3 < ratios["SGD flow"] < 5
    assert 1.5 < ratios["IGR flow, step h"] < 3


def _exact_batches(report, numbers):
    # The exact-batch flow is order 1 for a fixed batch order (ratio ~4 when halving h; docs:
    # x3.85); the SGD flow lacks the antisymmetric term, so order 0 there (~2; docs: x1.97).
    ratios = numbers["error_ratio_when_halving_h"]
    assert 3 < ratios["exact-batch flow"] < 5
    assert 1.5 < ratios["SGD flow"] < 3
    # Reversing the batch order negates the antisymmetric term exactly (docs: ratio -1.000).
    assert numbers["antisymmetric_part_reversed_over_given"] == pytest.approx(-1.0, abs=1e-9)


def _heavy_ball(report, numbers):
    # The fitted strength of the IGR-like term is (1 + beta) / (1 - beta) (docs: within 2% at
    # full size; the example's check: within 10%); the misfit grows with beta, as the O(h^2)
    # terms the order-1 flow leaves out grow like powers of 1/(1 - beta) (docs: 0.0%, 0.3%,
    # 0.9%, 2.0%; quick, over a 10x shorter horizon: 0.2%, 0.9%, 2.8%, 5.9%).
    fits = [numbers["fits"][beta] for beta in sorted(numbers["fits"], key=float)]
    misses = [abs(f["measured_factor"] / f["predicted_factor"] - 1) for f in fits]
    assert max(misses) < 0.1 and np.all(np.diff(misses) > 0)


def _sgd_without_replacement(report, numbers):
    # Headline: SGD without replacement follows GD's flow plus the extra regulariser, fitted
    # strength within 20% of 1 (docs: within 20%).
    assert abs(numbers["fits"]["without replacement"]["fitted_strength_mean"] - 1) < 0.2
    # Documented "partly": at full size the last check, a 2-standard-error comparison of two
    # Monte Carlo means (with and without replacement), does not separate them; at the quick
    # size (fewer epochs, 4 seeds) it does. Theory predicts no sign for that difference, so the
    # quick verdict "reproduced" is pinned only because the seeds are fixed; the five other
    # checks are the claim, and hold at both sizes.


def _verify_derivation(report, numbers):
    # The kit names the wrong constant's exact factor (1 - beta) / (1 + beta) (docs: 0.333333 at
    # beta = 0.5); the two slips leave an O(h^2) local error (slope 2, docs: 2.002 and 1.997)
    # where the correct flow has O(h^3) (docs: 3.01).
    beta = numbers["beta"]
    derivations = list(numbers["derivations"].values())
    correct, constant, sign = derivations
    (factor,) = re.findall(r"is ([-\d.]+) times", constant["coefficients_message_digits"])
    assert float(factor) == pytest.approx((1 - beta) / (1 + beta), rel=1e-5)
    assert "is -1 times the automatic one: a wrong sign" in sign["coefficients_message_digits"]
    assert abs(correct["estimate"]["slope"] - 3) < 0.3
    for wrong in (constant, sign):
        assert abs(wrong["estimate"]["slope"] - 2) < 0.3


def _sme(report, numbers):
    # On a quadratic the stationary spread along a direction of curvature lambda is, relative to
    # SGD's, sqrt((2 - h lambda) / 2) for the order-1 SME and sqrt((2 - h lambda) / (2 + h
    # lambda)) for order 2 (docs: 0.925 and 0.864, measured 0.930 and 0.906). 200 SME paths
    # (quick; 2000 in the docs) estimate a std to 5% (1 / sqrt(2 n)): within 0.1 is two of those.
    measured = numbers["std_ratio_to_sgd"]
    predicted = numbers["predicted_stationary_std_ratio_on_a_quadratic"]
    for order in ("SME order 1", "SME order 2"):
        assert abs(measured[order] - predicted[order]) < 0.1, order
    # Order 2 damps more along a stiff direction, so it is not closer to SGD's spread (docs).
    assert measured["SME order 2"] < measured["SME order 1"]
    # The deterministic flows give a point that SGD's spread dwarfs (docs: hundreds of times).
    sgd = numbers["statistics"]["SGD"]
    for point in numbers["deterministic_points"].values():
        assert sgd["std"] > 10 * abs(sgd["mean"] - point)


def _central_flow(report, numbers):
    # The central flow models GD's time average at the edge of stability, so it is the flow
    # closest to GD's Gaussian-averaged iterates (docs: mean relative distance 0.046 against
    # 0.104 for gradient flow and IGR over 600 steps). Quick mode sees only the first 40 steps
    # after the onset, before GD's oscillation grows: its sharpness has not settled within
    # 10% of 2/h yet, and every flow predicts the averaged loss about equally (the docs' loss
    # errors are 0.08-0.09 for every flow), so those two checks may fail; the ranking of
    # distances and the integration error (4 against 8 substeps) below the distance may not.
    (run,) = numbers.values()
    central = run["central flow"]["mean_relative_distance"]
    for other in ("gradient flow", "IGR"):
        assert central < run[other]["mean_relative_distance"], other
    integration = run["central flow"]["relative_integration_error_vs_8_substeps"]["4"]
    assert integration < central
    allowed = ("GD's sharpness within 10% of 2/h", "central flow's predicted loss closest")
    assert all(any(text in check for text in allowed) for check in _failed(report))


def _scaling_rules(report, numbers):
    # Each optimiser's own rule beats the other's at every k >= 2 (docs: 9.9x for Adam, 47x for
    # SGD at k = 2); at k = 2 the right rules move E L by less than one run's spread and the
    # wrong ones by more (docs: 0.19 and 0.03 against 1.92 and 1.59); k = 1 is the same run
    # (common random numbers), so its error is exactly 0. Both rules are first order: the error
    # grows like k - 1 (docs: error(4) / error(2) = 2.57 and 3.17, first order predicts 3).
    checks = numbers["checks"]
    for right, wrong in (
        ("Adam, square-root rule", "Adam, linear rule (wrong)"),
        ("SGD, linear rule", "SGD, square-root rule (wrong)"),
    ):
        good, bad = checks[right], checks[wrong]
        assert good["errors"][0] == 0 == bad["errors"][0]
        assert all(g < b for g, b in zip(good["errors"][1:], bad["errors"][1:]))
        assert bad["errors"][1] > 3 * good["errors"][1]
        assert good["spread_ratios"][1] < 1 < bad["spread_ratios"][1]
        assert 2 <= good["errors"][2] / good["errors"][1] <= 4.5


def _training_recipe(report, numbers):
    # Before the warmup's kink each order gains >= 3x on the one below (docs, quick: order 0/1/2
    # largest distances 3.2e-2, 2.4e-3, 6.3e-4); after it order 2 gains < 3x on order 1 (quick:
    # 2.4e-3 against 1.5e-3): one step across the kink has local error O(h^2).
    before, after = numbers["largest_distance_before_kink"], numbers["largest_distance_after_kink"]
    assert before["0"] > 3 * before["1"] and before["1"] > 3 * before["2"]
    assert after["1"] < 3 * after["2"]


EXPECTATIONS = {
    "central_flow": ("partly reproduced", _central_flow),
    "drift_cancellation": ("partly reproduced", _drift_cancellation),
    "exact_batches": ("reproduced", _exact_batches),
    "games": ("reproduced", _games),
    "heavy_ball": ("reproduced", _heavy_ball),
    "igr": ("reproduced", _igr),
    "principal_flow": ("partly reproduced", _principal_flow),
    "scaling_rules": ("reproduced", _scaling_rules),
    "sgd": ("reproduced", _sgd),
    "sgd_without_replacement": ("reproduced", _sgd_without_replacement),
    "sme": ("partly reproduced", _sme),
    "training_recipe": ("reproduced", _training_recipe),
    "verify_derivation": ("reproduced", _verify_derivation),
}
#: Where the quick verdict differs from the documented one; the reasons are in the checks above.
QUICK_DIFFERS = {"drift_cancellation", "sgd_without_replacement"}


def test_every_example_has_expectations():
    # A subset: expectations may arrive before their example does on a branch.
    assert set(EXAMPLES) <= set(EXPECTATIONS)
    for name in EXAMPLES:
        quick_verdict = EXPECTATIONS[name][0]
        assert (quick_verdict == _documented_verdict(name)) == (name not in QUICK_DIFFERS), name


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
    assert report["checks"] and f"verdict: {report['verdict']}" in result.stdout
    assert list(tmp_path.glob("*.png")), "an example must draw its figures"
    verdict, check = EXPECTATIONS[name]
    assert report["verdict"] == verdict, sorted(_failed(report))
    check(report, report["numbers"])
