"""The `driftlab` command: `driftlab demo`, `driftlab order`, `driftlab bench`."""

import argparse
import os
import sys
import time

import numpy as np

from . import _registry
from ._errors import DriftlabError, InputError
from ._io import machine_info, write_json_atomic


DEFAULT_OUTPUT = "driftlab-results"


class _Parser(argparse.ArgumentParser):
    """Wrong arguments: one line on stderr and exit status 2, no usage dump or traceback."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    if num < 3:
        raise InputError(f"`--num` must be at least 3 to fit a slope, got {num}.")
    return np.geomspace(h_min, h_max, num)


def run_order(problem_name, optimiser_name, flow_names, hs, kinds, t_end, order, hyper, seed):
    """Measure every (flow, kind) pair; returns the list of `OrderEstimate`s."""
    from .analysis import order_of_accuracy

    problem = _registry.lookup(_registry.PROBLEMS, "problem", problem_name)(seed=seed)
    make_optimiser = _registry.lookup(_registry.OPTIMISERS, "optimiser", optimiser_name)
    make_flows = [_registry.lookup(_registry.FLOWS, "flow", name) for name in flow_names]
    step, y0, args = make_optimiser(problem, hyper)
    estimates = []
    for flow_name, make_flow in zip(flow_names, make_flows):
        for kind in kinds:
            print(
                f"{kind} error of {optimiser_name} against {flow_name}:",
                file=sys.stderr,
            )
            estimates.append(
                order_of_accuracy(
                    step,
                    lambda h: make_flow(problem, step, h, order),
                    y0,
                    hs,
                    kind,
                    args,
                    t_end=t_end,
                    progress=_progress(f"{flow_name}/{kind}"),
                )
            )
    return estimates


def _report(estimates, output, stem, title, extra):
    from .plotting import plot_orders

    for estimate in estimates:
        print(estimate, end="\n\n")
    summary = [
        f"{e.kind:>6} {e.map_name} vs {e.flow_name}: slope {e.slope:.2f} +- "
        f"{e.slope_stderr:.2f} (expected {e.expected:g})"
        for e in estimates
    ]
    print("fitted orders:\n  " + "\n  ".join(summary))
    json_path = os.path.join(output, f"{stem}.json")
    write_json_atomic(
        {
            "machine": machine_info(),
            **extra,
            "estimates": [e.to_dict() for e in estimates],
        },
        json_path,
    )
    png_path = plot_orders(estimates, os.path.join(output, f"{stem}.png"), title)
    print(f"wrote {json_path} and {png_path}")


def demo(args):
    """GD on the MLP on digits against gradient flow and IGR, local and global error."""
    start = time.perf_counter()
    hs = np.geomspace(1 / 256, 1 / 8, 6)
    estimates = run_order("mlp", "gd", ["gradient", "igr"], hs, ["local", "global"], 1.0, 1, {}, 0)
    _report(
        estimates,
        args.output,
        "demo",
        "GD on a tanh MLP (digits): drift from gradient flow and IGR",
        {"command": "demo"},
    )
    print(f"done in {time.perf_counter() - start:.0f}s")


def order(args):
    hs = _step_grid(args.h_min, args.h_max, args.num)
    hyper = dict(kv.split("=", 1) for kv in args.hyper)
    hyper = {key: float(value) for key, value in hyper.items()}
    estimates = run_order(
        args.problem,
        args.optimiser,
        args.flow,
        hs,
        args.kind,
        args.t_end,
        args.order,
        hyper,
        args.seed,
    )
    _report(
        estimates,
        args.output,
        args.stem,
        f"{args.optimiser} on {args.problem}",
        {"command": "order", "arguments": vars(args) | {"func": None}},
    )
    if args.json:
        write_json_atomic([e.to_dict() for e in estimates], args.json)


def bench(args):
    """The flow-approximation sweep of `benchmarks/flow_error.py` (needs a source checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "benchmarks", "flow_error.py")):
        raise InputError(
            "`driftlab bench` runs `benchmarks/flow_error.py`, which ships with the source "
            "checkout, not the installed package; run it from a clone of the repository."
        )
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


def build_parser():
    parser = _Parser(prog="driftlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo_parser = commands.add_parser("demo", help="GD vs gradient flow and IGR on the MLP.")
    demo_parser.add_argument("--output", default=DEFAULT_OUTPUT)
    demo_parser.set_defaults(func=demo)
    order_parser = commands.add_parser("order", help="Measure an order of accuracy.")
    order_parser.add_argument("--problem", default="mlp", help=", ".join(_registry.PROBLEMS))
    order_parser.add_argument("--optimiser", default="gd", help=", ".join(_registry.OPTIMISERS))
    order_parser.add_argument(
        "--flow",
        nargs="+",
        default=["gradient", "igr"],
        help=", ".join(_registry.FLOWS),
    )
    order_parser.add_argument("--kind", nargs="+", default=["local"], choices=["local", "global"])
    order_parser.add_argument("--order", type=int, default=1, help="order p of 'modified' flows")
    order_parser.add_argument("--h-min", type=float, default=1 / 256)
    order_parser.add_argument("--h-max", type=float, default=1 / 8)
    order_parser.add_argument("--num", type=int, default=6)
    order_parser.add_argument("--t-end", type=float, default=1.0)
    order_parser.add_argument("--seed", type=int, default=0)
    order_parser.add_argument(
        "--hyper",
        nargs="*",
        default=[],
        help="optimiser settings, e.g. beta=0.5 num_batches=4",
    )
    order_parser.add_argument("--json", help="also write the estimates to this JSON file")
    order_parser.add_argument("--output", default=DEFAULT_OUTPUT)
    order_parser.add_argument("--stem", default="order")
    order_parser.set_defaults(func=order)
    bench_parser = commands.add_parser("bench", help="Flow-approximation benchmark sweep.")
    bench_parser.add_argument("--preset", choices=["smoke", "fast", "full"], default="fast")
    bench_parser.add_argument("--output", help="directory (default: benchmarks/results)")
    bench_parser.add_argument(
        "--suite",
        choices=["flows", "eos"],
        default="flows",
        help="flows: the flow-approximation sweep; eos: the edge-of-stability suite",
    )
    bench_parser.set_defaults(func=bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as error:
        print(f"driftlab: error: {error}", file=sys.stderr)
        return 2
    except DriftlabError as error:
        print(f"driftlab: measurement failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
