"""`driftlab weak`: the weak order of the stochastic modified equations of random-batch SGD."""

import os
import sys

import jax.random as jr

from .. import _registry
from .._errors import InputError
from .._io import checked_output_dir, machine_info, write_json_atomic
from ._common import (
    _checked,
    _grid_size,
    _nonnegative_int,
    _positive,
    _progress,
    _step_grid,
    DEFAULT_OUTPUT,
)


def run_weak(
    problem_name: str,
    orders,
    hs,
    t_end: float,
    *,
    num_batches: int = 0,
    batch_size: int = 8,
    num_samples: int = 20000,
    num_sde_samples: int = 1000,
    seed: int = 0,
    problem_kwargs: dict | None = None,
):
    r"""Weak orders of the SMEs of `orders` against random-batch SGD on a registry problem.

    $\varphi$ is the full-data loss. With `num_batches` $= m > 0$ the data is split
    into $m$ fixed batches and each SGD step draws one (Li, Tai & E's setting);
    with `num_batches=0` each step draws `batch_size` examples with replacement
    (per-example noise). **Returns:** `(estimates, setting)`, the list of
    `WeakOrderEstimate`s and a dict describing the run.
    """
    from ..analysis import weak_order_of_accuracy
    from ..flows import StochasticModifiedEquation
    from ..integrators import RandomBatchSGD

    make_problem = _registry.lookup(_registry.PROBLEMS, "problem", problem_name)
    problem = make_problem(seed=seed, **(problem_kwargs or {}))
    if num_batches:
        data, step = problem.batches(num_batches, seed=seed), RandomBatchSGD(problem.loss)
        sampling = f"one of {num_batches} fixed batches per step, with replacement"
    else:
        data = problem.data
        step = RandomBatchSGD(problem.loss, batch_size, examples=True)
        sampling = f"{batch_size} examples per step, drawn with replacement"
    full = problem.data

    def loss(params):
        return problem.loss(params, full)

    estimates = []
    for order in orders:
        if order not in (1, 2):
            raise InputError(f"`--order` values must be 1 or 2, got {order}.")
        print(f"SME order {order} against SGD ({sampling}):", file=sys.stderr, flush=True)
        estimates.append(
            weak_order_of_accuracy(
                step,
                lambda h, order=order: StochasticModifiedEquation.of(step, data, h, order),
                problem.params,
                hs,
                t_end,
                loss,
                num_samples,
                jr.fold_in(jr.key(seed), order),
                test_name="full-data loss",
                num_sde_samples=num_sde_samples,
                substeps=1,
                strict=False,
                progress=_progress(f"order {order}"),
            )
        )
    setting = {
        "problem": problem_name,
        "sampling": sampling,
        "t_end": t_end,
        "hs": [float(h) for h in hs],
        "num_sgd_samples": num_samples,
        "num_sde_samples": num_sde_samples,
    }
    return estimates, setting


def weak(args):
    checked_output_dir(args.output)
    hs = _step_grid(args.h_min, args.h_max, args.num)
    estimates, setting = run_weak(
        args.problem,
        args.order,
        hs,
        args.t_end,
        num_batches=args.num_batches,
        batch_size=args.batch_size,
        num_samples=args.samples,
        num_sde_samples=args.sde_samples,
        seed=args.seed,
    )
    for estimate in estimates:
        print(estimate, end="\n\n")
    path = os.path.join(args.output, f"{args.stem}.json")
    write_json_atomic(
        {"machine": machine_info(), **setting, "estimates": [e.to_dict() for e in estimates]},
        path,
    )
    print(f"wrote {path}")


def register(commands) -> None:
    """Add the `weak` subcommand to the `driftlab` parser's subcommands."""
    order_type = _checked(int, lambda k: k in (1, 2), "1 or 2")
    count = _checked(int, lambda n: n >= 1, ">= 1")
    parser = commands.add_parser("weak", help="Weak order of the SGD's SMEs (Monte Carlo).")
    parser.add_argument(
        "--problem",
        default="logistic",
        choices=_registry._DATA_PROBLEMS,
        help="the loss and data (problems with examples to sample)",
    )
    parser.add_argument("--order", nargs="+", type=order_type, default=[1, 2], help="SME orders")
    parser.add_argument("--h-min", type=_positive, default=0.1, help="smallest SGD step")
    parser.add_argument("--h-max", type=_positive, default=0.4, help="largest SGD step")
    parser.add_argument("--num", type=_grid_size, default=3, help="step sizes in the grid")
    parser.add_argument("--t-end", type=_positive, default=0.8, help="time of the comparison")
    parser.add_argument(
        "--num-batches",
        type=_nonnegative_int,
        default=0,
        help="m fixed batches (0: per-example draws)",
    )
    parser.add_argument("--batch-size", type=count, default=8, help="examples per SGD step")
    parser.add_argument("--samples", type=count, default=20000, help="SGD runs per step size")
    parser.add_argument("--sde-samples", type=count, default=1000, help="SME paths per step size")
    parser.add_argument("--seed", type=_nonnegative_int, default=0, help="PRNG seed")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="directory for STEM.json")
    parser.add_argument("--stem", default="weak", help="file name of the results")
    parser.set_defaults(func=weak)
