"""`driftlab bench`: the suites of `driftlab.suites`, the flow sweep and the EoS suite."""

import textwrap

from ..suites.eos import PRESET_GUIDE as EOS_GUIDE
from ..suites.flow_error import PRESET_GUIDE as FLOWS_GUIDE
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


def _preset_table() -> str:
    """The epilog of `driftlab bench --help`: each suite's presets, their time and purpose."""
    lines = ["presets (running time measured on 2 CPU cores; a loaded machine takes longer):"]
    for suite, guide in (("flows", FLOWS_GUIDE), ("eos", EOS_GUIDE)):
        lines.append(f"  --suite {suite}")
        for preset, (duration, purpose) in guide.items():
            lines.append(f"    {preset:<6} {duration}: {purpose}")
    return "\n".join(
        textwrap.fill(line, 88, subsequent_indent=" " * 11) if line.startswith("    ") else line
        for line in lines
    )


def register(commands) -> None:
    """Add the `bench` subcommand to the `driftlab` parser's subcommands."""
    parser = commands.add_parser(
        "bench",
        help="Flow-approximation benchmark sweep.",
        description=bench.__doc__,
        epilog=_preset_table(),
    )
    parser.add_argument(
        "--preset",
        choices=["smoke", "fast", "full"],
        default="fast",
        help="size of the run: smoke (a check that it runs), fast, or full (times below)",
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
