"""What every subcommand shares: the parser class, argument types, progress lines, the grid.

The bottom of `driftlab.cli`: subcommands import it, it imports no subcommand.
"""

import argparse
import math
import sys
import time

import numpy as np

from .._errors import InputError
from .._io import DEFAULT_OUTPUT as DEFAULT_OUTPUT


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
