"""Helpers shared by the benchmark scripts: where they write, and the suites' output helpers."""

import os

from driftlab.suites import _output
from driftlab.suites._output import (  # noqa: F401 (re-exported for the scripts)
    fmt,
    markdown_table,
    Progress,
    write_text_atomic,
)


#: Where the scripts write JSON, Markdown and figures unless told otherwise.
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def command_line(module: str, argv) -> str:
    """The command that reproduces a benchmark script's run, for the result files."""
    return _output.command_line(f"python -m {module}", argv)
