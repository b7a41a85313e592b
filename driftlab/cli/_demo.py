"""`driftlab demo`: GD against gradient flow and IGR on the MLP, the first thing to run."""

import time

from . import _order
from ._common import _Parser, DEFAULT_OUTPUT


def demo(args):
    """GD on the MLP on digits against gradient flow and IGR, local and global error."""
    start = time.perf_counter()
    # The demo is `driftlab order` with fixed settings: parsed by the same parser, so its
    # defaults are the order command's.
    parser = _Parser(prog="driftlab")
    _order.register(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    settings = parser.parse_args(
        ["order", "--problem", "mlp", "--optimiser", "gd", "--flow", "gradient", "igr"]
        + ["--kind", "local", "global", "--stem", "demo", "--output", args.output]
    )
    settings.command, settings.command_line = args.command, args.command_line
    _order.order(settings, "GD on a tanh MLP (digits): drift from gradient flow and IGR")
    print(f"done in {time.perf_counter() - start:.0f}s")


def register(commands) -> None:
    """Add the `demo` subcommand to the `driftlab` parser's subcommands."""
    parser = commands.add_parser(
        "demo",
        help="GD vs gradient flow and IGR on the MLP.",
        description=demo.__doc__,
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="directory for demo.json and demo.png"
    )
    parser.set_defaults(func=demo)
