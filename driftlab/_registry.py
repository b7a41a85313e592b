"""Names the CLI and the Python API use to select problems, optimisers and flows.

Each registry maps a name to a factory. A flow factory is called as
`factory(problem, step, h, order)` and returns an `AbstractFlow`; an optimiser
(an `Optimiser`) as `optimiser(problem, hyper)` and returns `(step, y0, args)`.
Each optimiser declares, once, its hyperparameters (type, default, allowed
range), the problems it runs on and the flows that model it; the CLI checks a
command line against these before anything is compiled.
"""

import dataclasses
import math
from collections.abc import Callable

from . import problems as _problems
from ._errors import InputError, unknown_name_error
from .flows import (
    AdamFlow,
    AlternatingGameFlow,
    ExactBatchSGDFlow,
    GradientFlow,
    HeavyBallFlow,
    IGRFlow,
    ModifiedFlow,
    PrincipalFlow,
    RMSPropFlow,
    SGDFlow,
    SimultaneousGameFlow,
)
from .integrators import (
    Adam,
    AlternatingGD,
    GradientDescent,
    HeavyBall,
    Nesterov,
    OrderAveragedSGDEpoch,
    RMSProp,
    SGDEpoch,
    SimultaneousGD,
)


PROBLEMS: dict[str, Callable] = {
    "quadratic": _problems.quadratic,
    "logistic": _problems.logistic_digits,
    "mlp": _problems.mlp_digits,
    "game": _problems.bilinear_game,
}


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One optimiser setting: its default (whose type is the setting's type), its meaning,
    and the values it may take (`allowed` says it in words, `valid` checks it)."""

    default: float | int | bool
    meaning: str
    allowed: str = "finite"
    valid: Callable[[float], bool] = math.isfinite

    def parse(self, name: str, value) -> float | int | bool:
        """`value` (a string from the command line, or a number) as this setting's type;
        `name` says which setting in the error message."""
        kind = type(self.default)
        text = value.strip().lower() if isinstance(value, str) else value
        words = {"true": 1.0, "yes": 1.0, "false": 0.0, "no": 0.0} if kind is bool else {}
        try:
            number = words[text] if isinstance(text, str) and text in words else float(text)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {value!r}.") from None
        if kind is bool:
            if number not in (0, 1):
                raise InputError(f"{name} is a flag: pass 1 or 0 (true or false), got {value!r}.")
            return bool(number)
        if kind is int:
            if not number.is_integer():
                raise InputError(f"{name} must be an integer, got {value!r}.")
            number = int(number)
        if not self.valid(number):
            raise InputError(f"{name} must be {self.allowed}, got {value!r}.")
        return number


_UNIT = {"allowed": "in [0, 1)", "valid": lambda x: 0 <= x < 1}
_NONNEGATIVE = {"allowed": "finite and >= 0", "valid": lambda x: 0 <= x < math.inf}
_POSITIVE = {"allowed": "finite and > 0", "valid": lambda x: 0 < x < math.inf}
_FLAG = {"allowed": "1 or 0"}
_DATA_PROBLEMS = ("logistic", "mlp")
_SINGLE_LOSS_PROBLEMS = ("quadratic", *_DATA_PROBLEMS)


@dataclasses.dataclass(frozen=True)
class Optimiser:
    """A registry optimiser: how to build it, and what it can be combined with.

    Called as `optimiser(problem, hyper)` it returns `(step, y0, args)`; `hyper`
    maps setting names to values (strings or numbers), missing ones take their
    defaults, and an unknown name or a value out of range is an `InputError`.
    """

    name: str
    build: Callable  # (problem, hyper with every setting) -> (step, y0, args)
    hyperparameters: dict[str, Hyperparameter]
    problems: tuple[str, ...]
    flows: tuple[str, ...]

    def resolve(self, hyper) -> dict:
        """Every setting of the optimiser: `hyper`'s values checked and parsed, else defaults."""
        unknown = [key for key in hyper if key not in self.hyperparameters]
        if unknown and not self.hyperparameters:
            raise InputError(
                f"optimiser {self.name!r} takes no hyperparameters, got {unknown[0]!r}."
            )
        if unknown:
            raise unknown_name_error(
                f"{self.name!r} hyperparameter", unknown[0], self.hyperparameters
            )
        return {
            key: spec.parse(f"`{key}` of {self.name}", hyper[key]) if key in hyper else spec.default
            for key, spec in self.hyperparameters.items()
        }

    def check_pairing(self, problem: str, flows) -> None:
        """Raise `InputError` unless the optimiser runs on `problem` and every flow models it."""
        if problem not in self.problems:
            raise InputError(
                f"optimiser {self.name!r} does not run on problem {problem!r}; its problems: "
                f"{', '.join(self.problems)}."
            )
        for flow in flows:
            if flow not in self.flows:
                raise InputError(
                    f"flow {flow!r} is not a flow of optimiser {self.name!r}; its flows: "
                    f"{', '.join(self.flows)}."
                )

    def __call__(self, problem, hyper=None):
        return self.build(problem, self.resolve(hyper or {}))


def _full_batch(make_map):
    def build(problem, hyper):
        step = make_map(problem.loss, hyper)
        return step, step.init(problem.params), problem.data

    return build


def _epoch(make_map):
    def build(problem, hyper):
        step = make_map(problem.loss)
        return step, problem.params, problem.batches(hyper["num_batches"])

    return build


def _game(make_map):
    def build(problem, hyper):
        loss_phi, loss_theta = _problems.bilinear_game_losses()
        return make_map(loss_phi, loss_theta, **hyper), problem.params, problem.data

    return build


_MOMENTUM = {"beta": Hyperparameter(0.5, "momentum coefficient", **_UNIT)}
_EPS = Hyperparameter(1e-8, "epsilon of the preconditioner", **_NONNEGATIVE)
_NUM_BATCHES = {
    "num_batches": Hyperparameter(4, "batches per epoch", "an integer >= 1", lambda x: x >= 1)
}
_PLAYERS = {
    "alpha": Hyperparameter(1.0, "player one's step size, as a multiple of h", **_POSITIVE),
    "lam": Hyperparameter(1.0, "player two's step size, as a multiple of h", **_POSITIVE),
}

OPTIMISERS: dict[str, Optimiser] = {
    optimiser.name: optimiser
    for optimiser in (
        Optimiser(
            "gd",
            _full_batch(lambda loss, hyper: GradientDescent(loss)),
            {},
            _SINGLE_LOSS_PROBLEMS,
            ("gradient", "igr", "principal", "principal-lanczos", "modified"),
        ),
        Optimiser(
            "sgd-epoch",
            _epoch(SGDEpoch),
            _NUM_BATCHES,
            _DATA_PROBLEMS,
            ("gradient", "sgd", "exact-batch-sgd", "modified"),
        ),
        # The mean over all m! batch orders (m! epochs per step): what `SGDFlow` models.
        Optimiser(
            "sgd-epoch-averaged",
            _epoch(OrderAveragedSGDEpoch),
            _NUM_BATCHES,
            _DATA_PROBLEMS,
            ("gradient", "sgd", "modified"),
        ),
        Optimiser(
            "heavy-ball",
            _full_batch(lambda loss, hyper: HeavyBall(loss, **hyper)),
            _MOMENTUM,
            _SINGLE_LOSS_PROBLEMS,
            ("heavy-ball", "modified"),
        ),
        Optimiser(
            "nesterov",
            _full_batch(lambda loss, hyper: Nesterov(loss, **hyper)),
            _MOMENTUM,
            _SINGLE_LOSS_PROBLEMS,
            ("modified",),
        ),
        # Without bias correction: the map must be autonomous for backward error analysis.
        Optimiser(
            "adam",
            _full_batch(lambda loss, hyper: Adam(loss, **hyper, bias_correction=False)),
            {
                "b1": Hyperparameter(0.9, "decay rate of the first moment", **_UNIT),
                "b2": Hyperparameter(0.999, "decay rate of the second moment", **_UNIT),
                "eps": _EPS,
                "eps_inside_sqrt": Hyperparameter(
                    False, "sqrt(v + eps) instead of sqrt(v) + eps", **_FLAG
                ),
            },
            _SINGLE_LOSS_PROBLEMS,
            ("adam", "modified"),
        ),
        Optimiser(
            "rmsprop",
            _full_batch(lambda loss, hyper: RMSProp(loss, **hyper)),
            {
                "rho": Hyperparameter(0.9, "decay rate of the squared gradients", **_UNIT),
                "eps": _EPS,
                "eps_inside_sqrt": Hyperparameter(
                    True, "sqrt(v + eps) instead of sqrt(v) + eps", **_FLAG
                ),
            },
            _SINGLE_LOSS_PROBLEMS,
            ("rmsprop", "modified"),
        ),
        Optimiser(
            "simultaneous-gd",
            _game(SimultaneousGD),
            _PLAYERS,
            ("game",),
            ("simultaneous-game", "modified"),
        ),
        Optimiser(
            "alternating-gd",
            _game(AlternatingGD),
            _PLAYERS,
            ("game",),
            ("alternating-game", "modified"),
        ),
    )
}


FLOWS: dict[str, Callable] = {
    "gradient": lambda problem, step, h, order: GradientFlow(problem.loss),
    "igr": lambda problem, step, h, order: IGRFlow(problem.loss, h),
    "modified": lambda problem, step, h, order: ModifiedFlow(step, h, order),
    "sgd": lambda problem, step, h, order: SGDFlow(problem.loss, h),
    "exact-batch-sgd": lambda problem, step, h, order: ExactBatchSGDFlow(problem.loss, h),
    "principal": lambda problem, step, h, order: PrincipalFlow(problem.loss, h),
    "principal-lanczos": lambda problem, step, h, order: PrincipalFlow(
        problem.loss, h, method="lanczos", k=10
    ),
    "simultaneous-game": lambda problem, step, h, order: SimultaneousGameFlow(
        step.loss_phi, step.loss_theta, h, step.alpha, step.lam
    ),
    "alternating-game": lambda problem, step, h, order: AlternatingGameFlow(
        step.loss_phi, step.loss_theta, h, step.alpha, step.lam
    ),
    "heavy-ball": lambda problem, step, h, order: HeavyBallFlow(problem.loss, h, step.beta),
    "adam": lambda problem, step, h, order: AdamFlow(
        problem.loss, h, step.b1, step.b2, step.eps, step.eps_inside_sqrt
    ),
    "rmsprop": lambda problem, step, h, order: RMSPropFlow(
        problem.loss, h, step.rho, step.eps, step.eps_inside_sqrt
    ),
}


def lookup(registry: dict, kind: str, name: str):
    """`registry[name]`, or an `InputError` listing the valid names and the closest one."""
    try:
        return registry[name]
    except KeyError:
        raise unknown_name_error(kind, name, registry) from None
