"""`driftlab bench`: the suites of `driftlab.suites`, the flow sweep and the EoS suite."""

from ._common import DEFAULT_OUTPUT


def bench(args):
    """Run a suite: the flow-approximation sweep or the edge-of-stability suite."""
    argv = ["--preset", args.preset, "--output", args.output]
    if args.suite == "eos":
        from ..suites import eos

        eos.run(args.preset, args.output, argv=argv)
        return
    from ..suites import flow_error

    flow_error.run(args.preset, args.output, argv=argv)


def register(commands) -> None:
    """Add the `bench` subcommand to the `driftlab` parser's subcommands."""
    parser = commands.add_parser(
        "bench",
        help="Flow-approximation benchmark sweep.",
        description=bench.__doc__,
    )
    parser.add_argument(
        "--preset",
        choices=["smoke", "fast", "full"],
        default="fast",
        help="size of the sweep: smoke (a check that it runs), fast, or full",
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="directory for the JSON, Markdown and figures"
    )
    parser.add_argument(
        "--suite",
        choices=["flows", "eos"],
        default="flows",
        help="flows: the flow-approximation sweep; eos: the edge-of-stability suite",
    )
    parser.set_defaults(func=bench)
