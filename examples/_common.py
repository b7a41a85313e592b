"""What every gallery example shares: its command line, its outputs and its verdict."""

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

from driftlab._io import machine_info, write_json_atomic


VERDICTS = ("reproduced", "partly reproduced", "not reproduced")


#: Where an example writes unless told otherwise: a scratch folder, so that running one
#: never rewrites the tracked figures of `docs/gallery/`.
SCRATCH = "driftlab-results"
GALLERY = pathlib.Path(__file__).resolve().parents[1] / "docs" / "gallery"


def parse_args(name: str, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m examples.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes, for the smoke test (seconds)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        default=os.path.join(SCRATCH, name),
        help=f"figures and results.json go here (default: {SCRATCH}/{name})",
    )
    where.add_argument(
        "--regenerate-docs",
        action="store_true",
        help=f"write to docs/gallery/{name}/ instead, replacing the gallery's tracked figures",
    )
    args = parser.parse_args()
    if args.regenerate_docs:
        if args.quick:
            parser.error("--quick results do not belong in the docs; drop one of the two flags")
        args.output = str(GALLERY / name)
    return args


def loss_curves(loss, path, data):
    """The loss and ||grad L||^2 at every point of a stacked trajectory `path`."""
    values, grads = jax.vmap(jax.value_and_grad(loss), in_axes=(0, None))(path, data)
    squared = sum(
        np.sum(np.asarray(g).reshape(len(values), -1) ** 2, axis=1)
        for g in jax.tree_util.tree_leaves(grads)
    )
    return np.asarray(values), squared


def at_loss_levels(levels, values, quantity):
    """`quantity` where the loss `values` (decreasing along the run) passes each level."""
    order = np.argsort(values)
    return np.interp(levels, values[order], quantity[order])


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def finish(name: str, args, claim: str, checks: dict[str, bool], numbers: dict, start: float):
    """Print the verdict (all checks hold / some / none) with its evidence, and write the JSON."""
    held = sum(checks.values())
    verdict = VERDICTS[0] if held == len(checks) else VERDICTS[1] if held else VERDICTS[2]
    print(f"\nclaim: {claim}")
    for check, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {check}")
    print(f"verdict: {verdict}")
    print(f"figures and results.json in {args.output}")
    write_json_atomic(
        {
            "example": name,
            "claim": claim,
            "quick": args.quick,
            "checks": checks,
            "verdict": verdict,
            "numbers": numbers,
            "seconds": time.perf_counter() - start,
            "machine": machine_info(),
        },
        os.path.join(args.output, "results.json"),
    )
    return verdict
