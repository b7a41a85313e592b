"""`driftlab order`: measure an optimiser's order of accuracy against flows, over a step grid."""

import os
import textwrap

from .. import _registry
from .._errors import InputError
from .._io import checked_output_dir, machine_info, write_json_atomic
from ..analysis._order import FLOOR_MARGIN
from ._common import (
    _checked,
    _grid_size,
    _nonnegative_int,
    _positive,
    _progress,
    _step_grid,
    DEFAULT_OUTPUT,
)


_nonnegative_float = _checked(float, lambda x: 0 <= x < float("inf"), "finite and >= 0")


#: Printed under the tables: what their two less obvious columns mean.
TABLE_NOTE = "\n".join(
    textwrap.fill(line, 88, subsequent_indent="  ")
    for line in (
        "floor: the smallest error the measurement can resolve at that h (round-off and the "
        "ODE solver's tolerance); a point is used in the fit only when its error is at least "
        f"{FLOOR_MARGIN:g}x its floor.",
        "max |1 - mu|: the stability index at the largest h, the largest |1 - mu| over the "
        "eigenvalues mu of the step map's Jacobian (h * lambda_max for GD); at 2, the edge of "
        "stability, the fit stops being meaningful.",
    )
)


def _parse_hyper(items) -> dict[str, str]:
    """`["beta=0.5", ...]` as `{"beta": "0.5"}`; the registry parses and checks the values."""
    hyper = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key or not value.strip():
            raise InputError(f"`--hyper {item}`: write each setting as KEY=VALUE, e.g. beta=0.5.")
        if key in hyper:
            raise InputError(f"`--hyper` sets {key!r} twice.")
        hyper[key] = value
    return hyper


def order(args, title=None):
    """Measure every (flow, kind) pair and report; validates everything before compiling."""
    from ..analysis import order_of_accuracy

    checked_output_dir(args.output)
    hs = _step_grid(args.h_min, args.h_max, args.num)
    make_problem = _registry.lookup(_registry.PROBLEMS, "problem", args.problem)
    optimiser = _registry.lookup(_registry.OPTIMISERS, "optimiser", args.optimiser)
    hyper = optimiser.resolve(_parse_hyper(args.hyper))
    flows = args.flow or optimiser.flows[:2]
    make_flows = [_registry.lookup(_registry.FLOWS, "flow", name) for name in flows]
    optimiser.check_pairing(args.problem, flows)
    schedule = _schedule(args, flows)
    record = {
        "command": args.command,
        "command_line": args.command_line,
        "problem": args.problem,
        "optimiser": args.optimiser,
        "hyperparameters": hyper,
        "seed": args.seed,
        "flows": flows,
        "kinds": args.kind,
        "order": args.order,
        "h": hs.tolist(),
        "t_end": args.t_end,
        "schedule": None if schedule is None else _schedule_record(args),
    }
    problem = make_problem(seed=args.seed)
    step, y0, data = optimiser.build(problem, hyper)
    if schedule is not None:
        from ..integrators import Scheduled, ScheduledState

        step, y0 = Scheduled(step, schedule), ScheduledState(y0, args.start)
    estimates = []
    for flow_name, make_flow in zip(flows, make_flows):
        for kind in args.kind:
            print(f"{kind} error of {args.optimiser} against {flow_name}:", flush=True)
            estimates.append(
                order_of_accuracy(
                    step,
                    lambda h: make_flow(problem, step, h, args.order),
                    y0,
                    hs,
                    kind,
                    data,
                    t_end=args.t_end,
                    progress=_progress(f"{flow_name}/{kind}"),
                )
            )
    _report(estimates, record, args, title or f"{args.optimiser} on {args.problem}")


#: `--schedule` values: the driftlab schedule each builds from the lengths in time.
SCHEDULES = ("warmup-cosine", "cosine")


def _schedule(args, flows):
    """The schedule of `--schedule` (lengths in time), or `None`; one-line errors."""
    if args.schedule is None:
        for name in ("warmup", "horizon"):
            if getattr(args, name) is not None:
                raise InputError(f"`--{name}` needs `--schedule` (one of {', '.join(SCHEDULES)}).")
        return None
    from ..integrators import CosineSchedule, WarmupCosineSchedule

    if flows != ["modified"]:
        raise InputError(
            "`--schedule`: only `--flow modified` (the automatic modified flow) follows a "
            f"schedule; the literature flows {', '.join(f for f in flows if f != 'modified')} "
            "assume a constant step."
        )
    if args.horizon is None:
        raise InputError(f"`--schedule {args.schedule}` needs `--horizon` (a time, tau = n h).")
    if args.schedule == "cosine":
        if args.warmup is not None:
            raise InputError("`--warmup` is for `--schedule warmup-cosine`, not `cosine`.")
        return CosineSchedule(args.horizon)
    if args.warmup is None:
        raise InputError("`--schedule warmup-cosine` needs `--warmup` (a time, tau = n h).")
    # A warmup from 0 has rate 0 at tau = 0; start it at a tenth of the peak so that the
    # first steps move.
    return WarmupCosineSchedule(args.warmup, args.horizon, init=0.1)


def _schedule_record(args) -> dict:
    return {"name": args.schedule, "warmup": args.warmup, "horizon": args.horizon}


def _report(estimates, record, args, title):
    from ..plotting import plot_orders

    for estimate in estimates:
        print(estimate, end="\n\n")
    print(TABLE_NOTE, end="\n\n")
    summary = [
        f"{e.kind:>6} {e.map_name} vs {e.flow_name}: slope {e.slope:.2f} +- "
        f"{e.slope_stderr:.2f} (expected {e.expected:g})"
        for e in estimates
    ]
    print("fitted orders:\n  " + "\n  ".join(summary))
    result = record | {
        "machine": machine_info(),
        "estimates": [e.to_dict() for e in estimates],
    }
    paths = [write_json_atomic(result, os.path.join(args.output, f"{args.stem}.json"))]
    if args.json:
        paths.append(write_json_atomic(result, args.json))
    paths.append(plot_orders(estimates, os.path.join(args.output, f"{args.stem}.png"), title))
    print(f"wrote {', '.join(paths)}")


def _optimiser_table() -> str:
    """The epilog of `driftlab order --help`: each optimiser's settings, problems and flows."""
    lines = ["optimisers (--hyper KEY=VALUE settings with default and allowed values):"]
    for name, optimiser in _registry.OPTIMISERS.items():
        lines.append(f"  {name}")
        for key, spec in optimiser.hyperparameters.items():
            lines.append(f"      {key}={spec.default!r}: {spec.meaning} ({spec.allowed})")
        lines.append(f"      problems: {', '.join(optimiser.problems)}")
        lines.append(f"      flows: {', '.join(optimiser.flows)}")
    return "\n".join(lines)


def register(commands) -> None:
    """Add the `order` subcommand to the `driftlab` parser's subcommands."""
    parser = commands.add_parser(
        "order",
        help="Measure an order of accuracy.",
        description=(
            "Measure how far an optimiser's iterates drift from flows over a geometric grid\n"
            "of step sizes, and fit the orders. Writes STEM.json (problem, optimiser,\n"
            "hyperparameters, seed, library versions, command line, errors, slopes) and\n"
            "STEM.png to --output. A bad value, a failed measurement or a step beyond the\n"
            "edge of stability (a StabilityWarning) ends with one line on stderr, status 2."
        ),
        epilog=_optimiser_table(),
    )
    parser.add_argument(
        "--problem", default="mlp", help="the loss: " + ", ".join(_registry.PROBLEMS)
    )
    parser.add_argument(
        "--optimiser",
        default="gd",
        help="the one-step map: " + ", ".join(_registry.OPTIMISERS) + " (see below)",
    )
    parser.add_argument(
        "--flow",
        nargs="+",
        help="flows to compare with, among the optimiser's flows listed below (default: its "
        "first two, e.g. gradient igr for gd): " + ", ".join(_registry.FLOWS),
    )
    parser.add_argument(
        "--kind",
        nargs="+",
        default=["local"],
        choices=["local", "global"],
        help="one-step error (slope order + 2) or error at --t-end (slope order + 1)",
    )
    parser.add_argument(
        "--order", type=_nonnegative_int, default=1, help="order p of the 'modified' flow"
    )
    parser.add_argument("--h-min", type=_positive, default=1 / 256, help="smallest step")
    parser.add_argument("--h-max", type=_positive, default=1 / 8, help="largest step")
    parser.add_argument(
        "--num", type=_grid_size, default=6, help="step sizes, geometrically spaced"
    )
    parser.add_argument("--t-end", type=_positive, default=1.0, help="time of the global error")
    parser.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="seed of the problem's data and weights"
    )
    parser.add_argument(
        "--hyper",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="optimiser settings, e.g. beta=0.9; keys, defaults and ranges below",
    )
    parser.add_argument(
        "--json", help="also write the results object of STEM.json to this path (default: no)"
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="directory for STEM.json and STEM.png"
    )
    parser.add_argument("--stem", default="order", help="file name of the results")
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="a learning-rate schedule in continuous time tau = n h (step n uses the rate "
        "h sigma(n h)); needs --flow modified (default: none, a constant step)",
    )
    parser.add_argument(
        "--warmup", type=_positive, help="warmup length, a time tau = n h (default: none)"
    )
    parser.add_argument(
        "--horizon",
        type=_positive,
        help="end of the cosine decay, a time tau = n h (default: none)",
    )
    parser.add_argument(
        "--start", type=_nonnegative_float, default=0.0, help="the time tau the map starts at"
    )
    parser.set_defaults(func=order)
