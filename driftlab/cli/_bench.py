"""`driftlab bench`: the suites of `driftlab.suites`, the flow sweep and the EoS suite."""

import os
import textwrap

from .._errors import InputError
from .._io import checked_output_dir
from ..suites import eos, flow_error
from ._common import DEFAULT_OUTPUT


#: Each suite: its module and the results file a `--case` rerun merges into.
SUITES = {"flows": (flow_error, "flow_error.json"), "eos": (eos, "eos.json")}


def bench(args):
    """Run a suite: the flow-approximation sweep or the edge-of-stability suite."""
    checked_output_dir(args.output)
    suite, results = SUITES[args.suite]
    argv = ["--preset", args.preset, "--output", args.output]
    if args.case is None:
        suite.run(args.preset, args.output, argv=argv)
        return
    if not os.path.exists(os.path.join(args.output, results)):
        raise InputError(
            f"`--case {args.case}` reruns one case into the {results} already in `--output` "
            f"({args.output}), which has none: run the whole preset there first."
        )
    argv += ["--case", args.case]
    if args.suite == "eos":
        eos.run(args.preset, args.output, argv=argv, only=args.case)
    else:
        flow_error.run(args.preset, args.output, argv=argv, only=(args.case,))


def _preset_table() -> str:
    """The epilog of `driftlab bench --help`: each suite's presets, their time and purpose."""
    lines = ["presets (running time measured on 2 CPU cores; a loaded machine takes longer):"]
    for suite, (module, _) in SUITES.items():
        lines.append(f"  --suite {suite}")
        for preset, (duration, purpose) in module.PRESET_GUIDE.items():
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
    parser.add_argument(
        "--case",
        help="rerun only this case of the preset (flows: problem/optimiser as the tables name "
        "it, e.g. quadratic/gd; eos: the problem, e.g. fc-digits) and replace its results in "
        "the files already in --output (default: the whole preset)",
    )
    parser.set_defaults(func=bench)
