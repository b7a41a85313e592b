"""Names the CLI and the Python API use to select problems, optimisers and flows.

Each registry maps a name to a factory. A flow factory is called as
`factory(problem, step, h, order)` and returns an `AbstractFlow`; an optimiser
factory as `factory(problem, hyper)` and returns `(step, y0, args)`.
"""

from collections.abc import Callable

from . import problems as _problems
from ._errors import unknown_name_error
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


def _full_batch(make_map):
    def factory(problem, hyper):
        step = make_map(problem.loss, hyper)
        return step, step.init(problem.params), problem.data

    return factory


def _epoch(make_map):
    def factory(problem, hyper):
        step = make_map(problem.loss)
        return step, problem.params, problem.batches(int(hyper.get("num_batches", 4)))

    return factory


def _game(make_map):
    def factory(problem, hyper):
        loss_phi, loss_theta = _problems.bilinear_game_losses()
        step = make_map(loss_phi, loss_theta, hyper.get("alpha", 1.0), hyper.get("lam", 1.0))
        return step, problem.params, problem.data

    return factory


OPTIMISERS: dict[str, Callable] = {
    "gd": _full_batch(lambda loss, hyper: GradientDescent(loss)),
    "sgd-epoch": _epoch(SGDEpoch),
    "heavy-ball": _full_batch(lambda loss, hyper: HeavyBall(loss, hyper.get("beta", 0.5))),
    "nesterov": _full_batch(lambda loss, hyper: Nesterov(loss, hyper.get("beta", 0.5))),
    # Without bias correction: the map must be autonomous for backward error analysis.
    "adam": _full_batch(
        lambda loss, hyper: Adam(
            loss,
            hyper.get("b1", 0.9),
            hyper.get("b2", 0.999),
            hyper.get("eps", 1e-8),
            bias_correction=False,
            eps_inside_sqrt=bool(hyper.get("eps_inside_sqrt", 0.0)),
        )
    ),
    "rmsprop": _full_batch(
        lambda loss, hyper: RMSProp(
            loss,
            hyper.get("rho", 0.9),
            hyper.get("eps", 1e-8),
            eps_inside_sqrt=bool(hyper.get("eps_inside_sqrt", 1.0)),
        )
    ),
    "simultaneous-gd": _game(SimultaneousGD),
    "alternating-gd": _game(AlternatingGD),
    # The mean over all m! batch orders (m! epochs per step): what `SGDFlow` models.
    "sgd-epoch-averaged": _epoch(OrderAveragedSGDEpoch),
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
