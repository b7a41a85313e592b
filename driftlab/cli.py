"""The `driftlab` command: `driftlab demo`, `driftlab order`, `driftlab bench`, `driftlab weak`."""

import argparse
import math
import os
import shlex
import sys
import time
import warnings

import numpy as np

from . import _registry, _weak_cli
from ._errors import DriftlabError, InputError, StabilityWarning
from ._io import checked_output_dir, machine_info, write_json_atomic


DEFAULT_OUTPUT = "driftlab-results"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help; the epilog's table kept as written."""

    def _get_help_string(self, action):
        # An option without a default says in its help what happens when it is left out.
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Wrong arguments: one line on stderr and exit status 2, no usage dump or traceback."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _checked(convert, valid, allowed):
    """An argparse `type` that converts, then rejects values outside `valid` (one-line error)."""

    def parse(text):
        value = convert(text)  # a ValueError becomes argparse's "invalid float value: ..."
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


_positive = _checked(float, lambda x: 0 < x < math.inf, "finite and > 0")
_nonnegative_int = _checked(int, lambda n: n >= 0, ">= 0")
_grid_size = _checked(int, lambda n: n >= 3, "at least 3 to fit a slope")


def _progress(label):
    start = time.perf_counter()

    def report(i, total, h):
        elapsed = time.perf_counter() - start
        print(
            f"  [{label}] {i}/{total}  h={h:.4g}  ({elapsed:.1f}s)",
            file=sys.stderr,
            flush=True,
        )

    return report


def _step_grid(h_min, h_max, num):
    if not h_min < h_max:
        raise InputError(
            f"`--h-min` ({h_min:g}) must be smaller than `--h-max` ({h_max:g}): the grid runs "
            "from the smallest step size to the largest."
        )
    return np.geomspace(h_min, h_max, num)


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
    from .analysis import order_of_accuracy

    checked_output_dir(args.output)
    hs = _step_grid(args.h_min, args.h_max, args.num)
    make_problem = _registry.lookup(_registry.PROBLEMS, "problem", args.problem)
    optimiser = _registry.lookup(_registry.OPTIMISERS, "optimiser", args.optimiser)
    hyper = optimiser.resolve(_parse_hyper(args.hyper))
    flows = args.flow or optimiser.flows[:2]
    make_flows = [_registry.lookup(_registry.FLOWS, "flow", name) for name in flows]
    optimiser.check_pairing(args.problem, flows)
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
    }
    problem = make_problem(seed=args.seed)
    step, y0, data = optimiser.build(problem, hyper)
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


def _report(estimates, record, args, title):
    from .plotting import plot_orders

    for estimate in estimates:
        print(estimate, end="\n\n")
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


def demo(args):
    """GD on the MLP on digits against gradient flow and IGR, local and global error."""
    start = time.perf_counter()
    settings = build_parser().parse_args(
        ["order", "--problem", "mlp", "--optimiser", "gd", "--flow", "gradient", "igr"]
        + ["--kind", "local", "global", "--stem", "demo", "--output", args.output]
    )
    settings.command, settings.command_line = args.command, args.command_line
    order(settings, "GD on a tanh MLP (digits): drift from gradient flow and IGR")
    print(f"done in {time.perf_counter() - start:.0f}s")


def bench(args):
    """The flow-approximation sweep of `benchmarks/flow_error.py` (needs a source checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "benchmarks", "flow_error.py")):
        raise InputError(
            "`driftlab bench` runs `benchmarks/flow_error.py`, which ships with the source "
            "checkout, not the installed package; run it from a clone of the repository."
        )
    if args.output:
        checked_output_dir(args.output)
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.suite == "eos":
        from benchmarks import eos

        argv = ["--preset", args.preset] + (["--output", args.output] if args.output else [])
        eos.run(args.preset, args.output or eos.RESULTS_DIR, argv=argv)
        return
    from benchmarks import flow_error

    argv = ["--preset", args.preset] + (["--output", args.output] if args.output else [])
    flow_error.run(args.preset, args.output or flow_error.RESULTS_DIR, argv=argv)


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


def build_parser():
    parser = _Parser(prog="driftlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo_parser = commands.add_parser(
        "demo",
        help="GD vs gradient flow and IGR on the MLP.",
        description=demo.__doc__,
    )
    demo_parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="directory for demo.json and demo.png"
    )
    demo_parser.set_defaults(func=demo)
    order_parser = commands.add_parser(
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
    order_parser.add_argument(
        "--problem", default="mlp", help="the loss: " + ", ".join(_registry.PROBLEMS)
    )
    order_parser.add_argument(
        "--optimiser",
        default="gd",
        help="the one-step map: " + ", ".join(_registry.OPTIMISERS) + " (see below)",
    )
    order_parser.add_argument(
        "--flow",
        nargs="+",
        help="flows to compare with, among the optimiser's flows listed below (default: its "
        "first two, e.g. gradient igr for gd): " + ", ".join(_registry.FLOWS),
    )
    order_parser.add_argument(
        "--kind",
        nargs="+",
        default=["local"],
        choices=["local", "global"],
        help="one-step error (slope order + 2) or error at --t-end (slope order + 1)",
    )
    order_parser.add_argument(
        "--order", type=_nonnegative_int, default=1, help="order p of the 'modified' flow"
    )
    order_parser.add_argument("--h-min", type=_positive, default=1 / 256, help="smallest step")
    order_parser.add_argument("--h-max", type=_positive, default=1 / 8, help="largest step")
    order_parser.add_argument(
        "--num", type=_grid_size, default=6, help="step sizes, geometrically spaced"
    )
    order_parser.add_argument(
        "--t-end", type=_positive, default=1.0, help="time of the global error"
    )
    order_parser.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="seed of the problem's data and weights"
    )
    order_parser.add_argument(
        "--hyper",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="optimiser settings, e.g. beta=0.9; keys, defaults and ranges below",
    )
    order_parser.add_argument(
        "--json", help="also write the results object of STEM.json to this path (default: no)"
    )
    order_parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="directory for STEM.json and STEM.png"
    )
    order_parser.add_argument("--stem", default="order", help="file name of the results")
    order_parser.set_defaults(func=order)
    bench_parser = commands.add_parser(
        "bench",
        help="Flow-approximation benchmark sweep.",
        description=bench.__doc__,
    )
    bench_parser.add_argument(
        "--preset",
        choices=["smoke", "fast", "full"],
        default="fast",
        help="size of the sweep: smoke (a check that it runs), fast, or full",
    )
    bench_parser.add_argument("--output", help="directory (default: benchmarks/results)")
    bench_parser.add_argument(
        "--suite",
        choices=["flows", "eos"],
        default="flows",
        help="flows: the flow-approximation sweep; eos: the edge-of-stability suite",
    )
    bench_parser.set_defaults(func=bench)
    _weak_cli.register(commands)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv=None) -> int:
    """Run the command; a bad value or a failed measurement is one line on stderr, status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["driftlab", *argv])
    try:
        with warnings.catch_warnings():
            # A measurement outside its premises must not print a confident slope.
            warnings.simplefilter("error", StabilityWarning)
            args.func(args)
    except InputError as error:
        print(f"driftlab: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (DriftlabError, StabilityWarning) as error:
        print(
            f"driftlab: measurement failed ({type(error).__name__}): {_one_line(error)}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
