"""The `driftlab` command: `driftlab demo`, `driftlab order`, `driftlab bench`, `driftlab weak`.

Each subcommand is a module with a `register(commands)` that adds its parser; this entry
point registers them and runs the one asked for. Imports run downward only: subcommands
import `_common` (and `demo` imports `order`, whose settings it reuses), never this module.
"""

import shlex
import sys
import warnings

from .._errors import DriftlabError, InputError, StabilityWarning
from . import _bench, _demo, _order, _weak
from ._common import _Parser


#: The subcommands, in the order `driftlab --help` lists them.
SUBCOMMANDS = (_demo, _order, _bench, _weak)


def build_parser():
    parser = _Parser(prog="driftlab", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for subcommand in SUBCOMMANDS:
        subcommand.register(commands)
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
