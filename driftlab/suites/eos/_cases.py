"""The edge-of-stability suite's cases: networks, learning rates, windows, and the flows compared.

Each preset is a list of `Case`s (`presets()`): smoke (a check that the suite runs, with
no run reaching the edge), fast (the field's three networks, 14-20 minutes on 2 cores) and
full. `flow_factories` builds the flows compared with GD.
"""

import dataclasses
from collections.abc import Callable

import driftlab as dl


#: Deep linear network: a product starting at 0.85^10 = 0.2 of the identity sharpens
#: progressively; at h = 0.06 GD settles on a period-2 orbit whose midpoint hovers at 2/h.
DEEP_LINEAR_SCALE = 0.85
DEEP_LINEAR_H = 0.06
#: Per preset: its running time (2 CPU cores) and what it is for, in words for a
#: first run (`driftlab bench --help` and the suite's first and last lines print them).
PRESET_GUIDE = {
    "smoke": (
        "about 30 s",
        "a check that the suite runs end to end (GD, flow windows, verdict, report) on a "
        "small fc network. Its 30 and 40 GD steps end before the sharpness reaches 2/h, so "
        "expect 0 of 2 runs at the edge of stability and no findings: run --preset fast "
        "for the edge itself",
    ),
    "fast": (
        "about 15 minutes",
        "the field's three networks (fc on digits, a CNN on mnist1d, a deep linear network) "
        "taken to the edge of stability, with Cohen et al.'s findings measured; the results "
        "in the documentation",
    ),
    "full": (
        "hours",
        "the fast preset's networks on more data, more steps and learning rates, and more "
        "flows per window",
    ),
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make_problem: Callable[[], dl.problems.Problem]
    hs: tuple[float, ...]
    num_steps: int = 1500
    every: int = 100  # sharpness, accuracy and window starts every `every` steps
    window: int = 100  # GD steps per flow window
    width: float = 3.0  # sigma (in steps) of the Gaussian time average of GD's iterates
    windows_per_phase: int = 2  # windows before onset and once GD oscillates
    principal_k: int = 3  # Ritz pairs of the Lanczos principal flow
    principal_iterations: int | None = None  # its Lanczos steps (None: PrincipalFlow's default)
    principal_windows: int = 0  # the last this many oscillating-phase windows get it (0: all)
    flows: tuple[str, ...] = ("gradient", "igr", "modified-2", "principal")
    central_k: int = 0  # top eigenpairs of the central flow (0: no central flow)
    central_window: int = 0  # its windows' length, in steps (0: `window`)
    central_windows: int = 1  # the last this many oscillating-phase windows get it
    # Further `(h, num_steps)` at which only GD runs (sharpness, loss, accuracy, the verdicts
    # on GD): Cohen et al.'s first finding is that the sharpness settles at 2/h for each h.
    gd_only: tuple[tuple[float, int], ...] = ()


def presets() -> dict[str, list[Case]]:
    """The smoke, fast and full presets' cases (built on call: each problem loads its data)."""
    from driftlab.problems import cnn_mnist1d, deep_linear, fc_digits

    smoke = [
        Case(
            "fc-digits",
            lambda: fc_digits(width=16, depth=2, num_samples=64),
            (0.06,),
            num_steps=40,
            every=10,
            window=8,
            width=1.0,
            windows_per_phase=1,
            principal_k=2,
            flows=("gradient", "igr"),
            gd_only=((0.05, 30),),
        ),
    ]
    fast = [
        Case(
            "fc-digits",
            lambda: fc_digits(width=200, depth=2, num_samples=1000),
            (0.035,),
            # GD's sharpness passes 2/h at step 800 and its loss first rises ~300 steps
            # later: windows of 400 steps from the onset see it. IGR, ModifiedFlow and the
            # principal flow over such windows cost minutes each at 55k parameters: they
            # are compared on deep-linear here and on fc-digits in the full preset.
            window=400,
            flows=("gradient",),
            central_k=1,
            central_window=40,
            # At h = 0.03 the sharpness reaches 2/h only at step 1500 (probed): 2,500 steps.
            gd_only=((0.03, 2500),),
        ),
        Case(
            "deep-linear",
            lambda: deep_linear(dim=20, depth=10, num_samples=500, init_scale=DEEP_LINEAR_SCALE),
            (DEEP_LINEAR_H,),
            # Its sharpness passes 2/h within 10 steps, during the first fit, so no window
            # fits before the onset; from there GD settles on a period-2 orbit.
            num_steps=800,
            every=20,
            window=40,
            # 43 to 56 Hessian eigenvalues have h lambda between 1 and 3 here. Cut at k = 3 of
            # 13 Ritz pairs inside that cluster, the principal flow's field jumps where the 3rd
            # and 4th Ritz values nearly meet: 177 solver steps per GD step (60% rejected) at
            # step 760, about 47 CPU minutes a 40-step window. Uncut (k = all 13 Ritz pairs,
            # 29 Hessian-vector products per field evaluation) it takes 7 steps per GD step
            # there (121 s CPU for the window) but 25 at the onset (about 7 CPU minutes a
            # window): it gets the last window only.
            flows=("gradient", "igr", "modified-2", "principal"),
            principal_k=13,
            principal_iterations=13,
            principal_windows=1,
            central_k=2,
            central_windows=2,
        ),
        Case(
            "cnn-mnist1d",
            # 250 signals keep a full-batch gradient of the 27,338-parameter CNN at ~0.05 s of
            # CPU: its sharpness starts at 0.74 of 2/h, passes it at step 900, and GD's loss
            # first rises (a spike) near step 1100 and oscillates from ~1400 on.
            lambda: cnn_mnist1d(num_samples=250),
            (0.03,),
            num_steps=1500,
            # The window from 1400 sees gradient flow leave GD; over 100 steps its sharpness
            # gains only ~0.025 x 2/h. Each window costs ~75 s CPU, so longer ones (or IGR)
            # would push the case past its ~6-minute share of the preset.
            window=100,
            flows=("gradient",),
            # Onset at step 500, GD's loss first rises at 676 (probed).
            gd_only=((0.035, 1500),),
        ),
    ]
    full = [
        dataclasses.replace(
            fast[0],
            make_problem=lambda: fc_digits(width=200, depth=2, num_samples=1797),
            hs=(0.025, 0.03, 0.035),
            num_steps=5000,
            every=50,
            windows_per_phase=4,
            flows=("gradient", "igr", "modified-2"),
            central_windows=2,
            gd_only=(),  # every h gets windows
        ),
        # The fast preset's CNN on four times the signals, a second h, denser checkpoints.
        dataclasses.replace(
            fast[2],
            make_problem=lambda: cnn_mnist1d(num_samples=1000),
            hs=(0.03, 0.035),
            num_steps=3000,
            every=50,
            window=200,
            windows_per_phase=4,
            flows=("gradient", "igr"),
            gd_only=(),
        ),
        dataclasses.replace(
            fast[1],
            make_problem=lambda: deep_linear(
                dim=20, depth=10, num_samples=1000, init_scale=DEEP_LINEAR_SCALE
            ),
            num_steps=2000,
            windows_per_phase=4,
            flows=("gradient", "igr", "modified-2", "principal"),
        ),
    ]
    return {"smoke": smoke, "fast": fast, "full": full}


def flow_factories(problem, step, k: int, num_iterations: int | None = None) -> dict:
    """The flows compared with GD, as `h -> (flow, complex_state)`."""
    return {
        "gradient": lambda h: (dl.GradientFlow(problem.loss), False),
        "igr": lambda h: (dl.IGRFlow(problem.loss, h), False),
        "modified-2": lambda h: (dl.ModifiedFlow(step, h, order=2), False),
        # Beyond h * lambda = 1 the principal flow's field is complex: it runs on a complex
        # state whose real part is compared with GD.
        "principal": lambda h: (
            dl.PrincipalFlow(problem.loss, h, method="lanczos", k=k, num_iterations=num_iterations),
            True,
        ),
    }
