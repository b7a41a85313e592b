r"""What a traced function costs, read off its jaxpr: matrix-product FLOPs and the largest array.

Deterministic counts for the scale benchmark and for tests that guard the cost of an
expansion structurally (a wall-clock time on a shared machine is not a cost). Loops
are walked into: a `scan` body counts `length` times, a `while` body once per
iteration it is given (`while_iterations`, default 1: unknown trip counts are not
guessed), and a `cond` counts its dearest branch.
"""

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.extend import core as jex_core


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2 * contracted * math.prod(eqn.outvars[0].aval.shape)


def _walk(jaxpr, while_iterations: int) -> tuple[int, int]:
    """`(flops, largest)` of a jaxpr: matrix-product FLOPs and the most elements of any value."""
    flops, largest = 0, 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        name = eqn.primitive.name
        if name == "dot_general":
            flops += _dot_flops(eqn)
            continue
        inner = [_walk(sub, while_iterations) for sub in _sub_jaxprs(eqn)]
        if not inner:
            continue
        largest = max(largest, *(size for _, size in inner))
        if name == "cond":
            flops += max(f for f, _ in inner)
        elif name == "scan":
            flops += eqn.params["length"] * sum(f for f, _ in inner)
        elif name == "while":
            flops += while_iterations * sum(f for f, _ in inner)
        else:
            flops += sum(f for f, _ in inner)
    return flops, largest


def jaxpr_cost(fn: Callable, *args, while_iterations: int = 1) -> tuple[int, int]:
    r"""`(flops, largest)`: the matrix-product FLOPs of `fn(*args)` ($2mnk$ per product)
    and the number of elements of its largest intermediate array."""
    return _walk(jax.make_jaxpr(fn)(*args).jaxpr, while_iterations)


def compiled_flops(fn: Callable, *args) -> float:
    """The FLOPs of `fn(*args)` as XLA compiles it (`cost_analysis` of the optimised HLO).

    Unlike `jaxpr_cost`, this sees XLA's common-subexpression elimination (a primal or a
    tangent that two nested `jvp`s both compute is computed once) and counts every
    operation, not only matrix products; it depends on the backend's compiler.
    """
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])
