"""What the suites share: progress lines, Markdown tables, atomic text files, command lines."""

import math
import sys
import time

from driftlab._io import atomic_path


class Progress:
    """Prints one line per finished item, with the running time since creation."""

    def __init__(self, total: int | None = None):
        self.start = time.perf_counter()
        self.total = total
        self.count = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        self.count += 1
        counter = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        print(f"[{counter} {self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def fmt(value, digits: int = 3) -> str:
    """A number for a table: `-` for None/NaN, scientific for very small or large values."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    value = float(value)
    if math.isnan(value):
        return "-"
    if value != 0 and not 1e-2 <= abs(value) < 1e4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def markdown_table(headers, rows) -> str:
    """A GitHub-flavoured Markdown table; cells are formatted with `fmt`."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text_atomic(text: str, path: str) -> str:
    """Write `text` through a temporary file and `os.replace`, like `driftlab._io`'s JSON
    (so a Markdown report gets the same file mode as its JSON)."""
    with atomic_path(path, ".tmp") as temporary, open(temporary, "w") as file:
        file.write(text)
    return path


def command_line(program: str, argv) -> str:
    """The command that reproduces a run, for the result files."""
    return " ".join([program, *argv])
