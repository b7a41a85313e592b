r"""What the flow sweep measures: its cases, presets, step-size scales and expectations.

Each case is a problem, an optimiser and the flows compared with it, on a grid of a
dimensionless step size $x$ taken in the optimiser's own validity scale (`SCALES`):
$h\lambda_{max}$ for the maps whose modified flows expand in $h\nabla^2L$, and
$h\lambda_P/(1-\beta_2)$ for Adam, whose expansion's coefficients carry
$\beta_2/(1-\beta_2)$ and whose curvature is seen through its preconditioner.
`expectation` gives, per pairing, the slopes theory backs and why.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from driftlab import _registry
from driftlab._tree import ravel
from driftlab.integrators import advance


#: Local slopes are fitted on the points with x at most this (the asymptotic regime).
FIT_MAX = 0.5
#: Global slopes on x at most this: at a fixed time t the global error carries GD's
#: decay (1 - h lambda)^(t/h) = exp(-t lambda (1 + h lambda / 2 + ...)), whose h-dependence
#: lowers the log-log slope by about t lambda * h lambda / 2 (0.6 at h lambda = 0.5 for
#: t = 5 / lambda: the closed form on the quadratic, see `quadratic_closed_form`).
GLOBAL_FIT_MAX = 0.1
#: A flow tracks the optimiser while its global error is at most this fraction of |params|.
TRACKING_TOLERANCE = 1e-2
#: Above this many parameters the dense principal flow (a Hessian eigendecomposition per
#: field evaluation) is skipped; `principal-lanczos` is its matrix-free counterpart.
DENSE_PRINCIPAL_LIMIT = 256
#: Flows solved on a complex128 state: the principal flow's field is complex where some
#: h * lambda_i > 1, and its real part at multiples of h is GD's iterate.
COMPLEX_STATE_FLOWS = ("principal", "principal-lanczos")

#: The flows (registry names) that model each optimiser: the registry's own pairing
#: (`Optimiser.flows`), less `modified` (the automatic `ModifiedFlow`, which applies to
#: every optimiser). A registry flow named in no entry is tried on every optimiser, so new
#: flows show up in the `full` preset without editing this file; where it does not apply,
#: the failure is recorded.
PAIRS = {
    name: tuple(flow for flow in optimiser.flows if flow != "modified")
    for name, optimiser in _registry.OPTIMISERS.items()
}
#: Which optimisers each problem is studied with in the `full` preset.
PROBLEM_OPTIMISERS = {
    "quadratic": ("gd", "heavy-ball", "nesterov", "adam", "rmsprop"),
    "logistic": ("gd", "sgd-epoch", "sgd-epoch-averaged", "heavy-ball", "adam"),
    "mlp": ("gd", "sgd-epoch", "heavy-ball", "adam"),
    "game": ("simultaneous-gd", "alternating-gd"),
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """A dimensionless step size: `unit(problem, step, y, args)` is `(h at x = 1, time unit)`.

    Global errors are taken at `horizon` time units; `label` names x in tables and figures.
    """

    label: str
    description: str
    unit: Callable


def _curvature_unit(problem, step, y, args):
    curvature = dl.lambda_max(problem.loss, problem.params, problem.data)
    return 1.0 / curvature, 1.0 / curvature


def preconditioned_curvature(problem, step) -> float:
    r"""$\lambda_P = \lambda_{max}(P^{-1/2} H P^{-1/2})$, $P$: Adam's denominator, slow manifold.

    On the slow manifold $v = g^2$, so $P = |g| + \epsilon$ ($\sqrt{g^2 + \epsilon}$ with
    `eps_inside_sqrt`); the Hessian of $u \mapsto L(P^{-1/2}u)$ is $P^{-1/2}HP^{-1/2}$.
    """
    grad = jax.grad(problem.loss)(problem.params, problem.data)
    if step.eps_inside_sqrt:
        root = jtu.tree_map(lambda g: jnp.sqrt(jnp.sqrt(g**2 + step.eps)), grad)
    else:
        root = jtu.tree_map(lambda g: jnp.sqrt(jnp.abs(g) + step.eps), grad)
    scaled = lambda u, data: problem.loss(jtu.tree_map(jnp.divide, u, root), data)
    return dl.lambda_max(scaled, jtu.tree_map(jnp.multiply, problem.params, root), problem.data)


def _adam_unit(problem, step, y, args):
    curvature = preconditioned_curvature(problem, step)
    return float(1 - step.b2) / curvature, 1.0 / curvature


SCALES = {
    "curvature": Scale(
        "h*lambda_max",
        "h lambda_max, lambda_max of the loss's Hessian at the start; global errors at "
        "t = horizon / lambda_max (times an SGD epoch's m steps)",
        _curvature_unit,
    ),
    "adam": Scale(
        "h*lambda_P/(1-b2)",
        "h lambda_P / (1 - b2): Adam's expansion carries b2 / (1 - b2) (the memory of v) "
        "times the curvature seen through its denominator, lambda_P = lambda_max(P^-1/2 H "
        "P^-1/2) with P = |g| + eps on the slow manifold; global errors at t = horizon / "
        "lambda_P, before a gradient component reaches zero (where the sign-like field "
        "-g / (|g| + eps) turns over within eps and the slow manifold v = g^2 ends)",
        _adam_unit,
    ),
}


@dataclasses.dataclass(frozen=True)
class Start:
    r"""Where a case starts instead of the problem's initial point.

    GD's iterate after `warm_up_steps` steps at $h = $ `warm_up_step` $/\lambda_{max}$ (of
    the initial point), then moved by `kick` times its norm along the Hessian's top
    eigenvector there (its sign fixed by its largest entry being positive).
    """

    warm_up_step: float
    warm_up_steps: int
    kick: float = 0.0


def started(problem, start: Start | None):
    """`problem` with its parameters moved to `start` (unchanged for `None`)."""
    if start is None:
        return problem
    h = start.warm_up_step / dl.lambda_max(problem.loss, problem.params, problem.data)
    step = dl.GradientDescent(problem.loss)
    params = advance(step, problem.params, h, start.warm_up_steps, problem.data)
    if start.kick:
        top = dl.hessian_eigenpairs(problem.loss, params, problem.data, k=1).eigenvectors[:, -1]
        top = top * np.sign(top[np.argmax(np.abs(top))])
        flat, unravel = ravel(params)
        params = unravel(flat + start.kick * jnp.linalg.norm(flat) * top)
    return eqx.tree_at(lambda p: p.params, problem, params)


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem and optimiser, and the flows to compare with it.

    `flows=None` means every registry flow paired with the optimiser (`paired_flows`);
    `orders` are the orders of the automatic `modified` flow. `drift` names the flows
    (labels such as `"igr"`, `"modified-2"`) followed along a trajectory; `True`: all.
    `scale` names the case's step-size scale (`SCALES`); `grid` and `horizon`, when set,
    replace the preset's. `start` moves the initial point (`Start`); `problem_label` names
    the problem in tables and figures; `flow_options` maps a flow's name to fields replaced
    in the registry's flow (e.g. the Lanczos principal flow's `k`).
    """

    problem: str
    optimiser: str
    flows: tuple[str, ...] | None = None
    orders: tuple[int, ...] = ()
    problem_options: dict = dataclasses.field(default_factory=dict)
    hyper: dict = dataclasses.field(default_factory=dict)
    drift: bool | tuple[str, ...] = False
    label: str | None = None
    scale: str = "curvature"
    grid: tuple[float, ...] | None = None
    horizon: float | None = None
    start: Start | None = None
    problem_label: str | None = None
    flow_options: dict = dataclasses.field(default_factory=dict)

    @property
    def optimiser_label(self) -> str:
        """How tables and figure names call the optimiser: `label`, else its registry name."""
        return self.label or self.optimiser

    @property
    def name(self) -> str:
        """`problem/optimiser` as tables call the case (`problem_label` when set)."""
        return f"{self.problem_label or self.problem}/{self.optimiser_label}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """The cases, the default grid of x, and the times global errors and drift use.

    Global errors are taken at `horizon` time units of the case's scale times the map's
    duration per unit step (an SGD epoch of m batches lasts m h); drift over
    `drift_steps` steps at x = `drift_scaled_step`.
    """

    cases: tuple[Case, ...]
    scaled_steps: tuple[float, ...]
    horizon: float = 5.0
    drift_scaled_step: float = 0.5
    drift_steps: int = 40


#: Adam's grid in its own scale: two decades below where the series starts to track
#: (converged slopes) up to where it has stopped.
ADAM_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Adam's horizon in units of 1 / lambda_P: inside the time a gradient component of the
#: quadratic takes to reach zero (1.7 / lambda_P at the start).
ADAM_HORIZON = 1.0
#: The grid of GD on the quadratic: dense below 0.1, where the global slopes are fitted.
QUADRATIC_GD_GRID = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5)
#: The kick of `MLP_PRINCIPAL`'s start along the top Hessian eigenvector, times |params|.
#: Measured: 0.003 moves lambda_max from 2.69 to 4.16 and an eigenvalue crosses 1/h along
#: GD's path at h lambda_max = 1.2 and 1.5; 0.01 at 1.2, 1.5 and 1.8; 0.001 at none.
MLP_KICK = 0.001
#: GD on a 310-parameter MLP (hidden = 4) against the principal flow on both sides of
#: h lambda_max = 1. From the initial point the Hessian sharpens within a few steps (h
#: lambda_2 from 0.53 to 1.79 in 4 steps at h lambda_max = 1.2): an eigenvalue crosses 1/h
#: at every grid point beyond 1, where the flow does not exist. Late in training (12000
#: steps at 0.2, loss 0.025) the spectrum stays put along the short path (top ratios 1,
#: 0.40, 0.37), but GD hardly moves along its sharp directions and every flow's error is
#: at the solver floor; the kick along the top eigenvector gives GD the oscillation beyond
#: 1 that gradient flow and IGR cannot follow. The Lanczos flow with k = num_iterations =
#: 30 equals the dense field here to 6e-15 (the gradient's Krylov space closes within 30
#: steps) at 1/40 of its cost per evaluation.
MLP_PRINCIPAL = Case(
    "mlp",
    "gd",
    ("gradient", "igr", "principal-lanczos"),
    problem_options={"hidden": 4},
    problem_label="mlp-hidden-4",
    start=Start(0.2, 12000, MLP_KICK),
    flow_options={"principal-lanczos": {"k": 30, "num_iterations": 30}},
    grid=(0.02, 0.05, 0.1, 0.2, 0.5, 1.2, 1.5, 1.8),
)


def _full_cases() -> tuple[Case, ...]:
    cases = []
    for problem, optimisers in PROBLEM_OPTIMISERS.items():
        for optimiser in optimisers:
            affordable = 6 if problem in ("quadratic", "game") else 4
            adam = dict(scale="adam", grid=ADAM_GRID, horizon=ADAM_HORIZON)
            cases.append(
                Case(
                    problem,
                    optimiser,
                    orders=tuple(range(1, affordable + 1)),
                    drift=True,
                    **(adam if optimiser == "adam" else {}),
                )
            )
    return tuple(cases)


#: Per preset: its running time (2 CPU cores) and what it is for, in words for a
#: first run (`driftlab bench --help` prints them).
PRESET_GUIDE = {
    "smoke": (
        "under a minute",
        "a check that the sweep runs end to end: GD on the quadratic against four flows at "
        "six step sizes, slopes and tracking limits included",
    ),
    "fast": (
        "about 20 minutes",
        "every problem and optimiser against its paired flows on its own step-size scale; "
        "the results in the documentation",
    ),
    "full": (
        "hours",
        "16 step sizes, every paired flow, ModifiedFlow orders 1 to 6, longer drift",
    ),
}


PRESETS = {
    "smoke": Preset(
        cases=(
            Case(
                "quadratic",
                "gd",
                ("gradient", "igr", "principal"),
                orders=(2,),
                drift=("gradient", "igr"),
            ),
        ),
        scaled_steps=(0.01, 0.03, 0.1, 0.3, 1.5, 2.5),
        drift_steps=20,
    ),
    "fast": Preset(
        cases=(
            Case(
                "quadratic",
                "gd",
                ("gradient", "igr", "principal"),
                (1, 2, 3, 4, 5, 6),
                drift=("gradient", "igr", "modified-2", "modified-4", "principal"),
                grid=QUADRATIC_GD_GRID,
            ),
            Case("quadratic", "heavy-ball", ("heavy-ball",), (1, 2)),
            # optax's defaults (b1 = 0.9, b2 = 0.999, eps = 1e-8 outside the root).
            Case(
                "quadratic",
                "adam",
                ("adam",),
                (1,),
                scale="adam",
                grid=ADAM_GRID,
                horizon=ADAM_HORIZON,
            ),
            Case(
                "mlp",
                "adam",
                ("adam",),
                (1,),
                hyper={"b1": 0.5, "b2": 0.7, "eps": 1e-2, "eps_inside_sqrt": 1.0},
                label="adam-b2-0.7",
                scale="adam",
                grid=ADAM_GRID,
                horizon=ADAM_HORIZON,
            ),
            Case("logistic", "sgd-epoch", ("gradient", "sgd", "exact-batch-sgd"), (1,)),
            # No `modified-1` here: its jet runs through all m! = 24 epochs of the mean
            # (minutes per point); against one order it is `exact-batch-sgd`'s row above.
            Case("logistic", "sgd-epoch-averaged", ("gradient", "sgd")),
            Case("mlp", "gd", ("gradient", "igr"), (2,), drift=("gradient", "igr")),
            MLP_PRINCIPAL,
            Case("game", "simultaneous-gd", ("simultaneous-game",), (1, 3)),
            Case(
                "game",
                "alternating-gd",
                ("alternating-game",),
                (1, 3),
                drift=("alternating-game", "modified-3"),
            ),
        ),
        scaled_steps=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5),
    ),
    "full": Preset(
        cases=_full_cases(),
        scaled_steps=tuple(np.round(np.geomspace(0.01, 2.5, 16), 4)),
        drift_steps=100,
    ),
}


def paired_flows(optimiser: str) -> tuple[str, ...]:
    """Registry flows that model `optimiser`, plus registry flows no `PAIRS` entry names."""
    named = {name for names in PAIRS.values() for name in names} | {"modified"}
    unpaired = tuple(name for name in _registry.FLOWS if name not in named)
    return PAIRS.get(optimiser, ()) + unpaired


@dataclasses.dataclass(frozen=True)
class Expectation:
    """The slopes theory backs for one pairing (`None`: errors at round-off), and why."""

    local: int | None
    global_: int | None
    reason: str


def expectation(problem: str, optimiser: str, flow: str, order: int | None) -> Expectation:
    """What theory predicts for `flow` against `optimiser` on `problem`."""
    if flow == "principal" and problem == "quadratic" and optimiser == "gd":
        return Expectation(
            None,
            None,
            "exact on a quadratic: its field is (1/h) logm(I - hA), GD's iterates lie on it "
            "for every h != 1/lambda_i (complex state beyond h lambda = 1): round-off",
        )
    if flow == "sgd" and optimiser == "sgd-epoch":
        return Expectation(
            2,
            1,
            "SGDFlow models the mean over batch orders; one fixed order differs from it by "
            "an antisymmetric O(h^2) term per epoch",
        )
    if flow == "sgd" and optimiser == "sgd-epoch-averaged":
        return Expectation(3, 2, "Smith et al.: the order-averaged epoch to O(h^3) per epoch")
    if order is None:
        return Expectation(None, None, "no flow was built")
    reasons = {
        "gradient": "order 0: the map's Euler field",
        "principal": "order 1: GD's modified flow through h; misses third-derivative terms at h^2",
        "principal-lanczos": "order 1: GD's modified flow through h; misses third-derivative "
        "terms at h^2 (exact on quadratics when the top-k Ritz pairs hold every h lambda > 1)",
        "exact-batch-sgd": "order 1 for the fixed order of the epoch",
    }
    reason = reasons.get(flow, f"order {order}: the map's modified flow to h^{order}")
    return Expectation(order + 2, order + 1, reason)
