r"""A forward walk over a traced function's jaxpr, carrying a tag per value.

Backward error analysis needs maps that are smooth and autonomous; both are
properties of the traced update, so they are read off its jaxpr: each value
gets a tag (which inputs it depends on, and how), computed primitive by
primitive by a `rule`, and, when the inputs are concrete, its value too. Calls
(`jit`, `custom_jvp_call`, `custom_vjp_call`, `checkpoint`) are walked into, so
a `sign` inside a jitted helper is seen as `sign`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.extend import core as jex_core

from .._errors import InputError
from .._tree import array_leaves, split


#: Parameters under which call-like primitives keep the jaxpr they run (inputs map 1:1).
_CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
#: Control flow whose inputs do not map 1:1 onto one body; the rule sees them whole.
_CONTROL_FLOW = frozenset({"cond", "while", "scan"})

Rule = Callable[[Any, Sequence[Any], Sequence[Any] | None, str], Sequence[Any]]


def _called_jaxpr(eqn):
    if eqn.primitive.name in _CONTROL_FLOW:
        return None
    for key in _CALL_JAXPR_PARAMS:
        sub = eqn.params.get(key)
        if sub is not None:
            return sub
    return None


def where(eqn) -> str:
    """The first frame outside JAX that issued `eqn`: `file:line (function)`, or ''."""
    traceback = eqn.source_info.traceback
    if traceback is None:
        return ""
    for frame in traceback.frames:
        name = frame.file_name.replace("\\", "/")
        if "/jax/" not in name and "/jaxlib/" not in name and "/equinox/" not in name:
            short = "/".join(name.split("/")[-3:])
            return f"{short}:{frame.line_num} ({frame.function_name})"
    return ""


def walk(
    closed: Any,
    in_tags: Sequence[Any],
    rule: Rule,
    constant_tag: Any,
    in_values: Sequence[Any] | None = None,
    *,
    evaluate: bool = False,
    location: str = "",
):
    """Tags (and values) of the outputs of `closed`.

    `rule(eqn, tags, values, location)` returns the output tags of one
    primitive; `values[i]` is the value of input `i` (concrete or traced), or
    `None` when it is not evaluated. Literals and closed-over constants
    carry `constant_tag` and their values. With `evaluate`, every primitive is
    also evaluated on `in_values` (concrete or traced). `location` names where
    the outermost enclosing call was issued.
    """
    jaxpr = getattr(closed, "jaxpr", closed)
    consts = list(getattr(closed, "consts", []))
    tags, values = {}, {}

    def read(atom):
        if isinstance(atom, jex_core.Literal):
            return constant_tag, atom.val
        return tags[atom], values.get(atom)

    for var, const in zip(jaxpr.constvars, consts):
        tags[var], values[var] = constant_tag, const
    for i, var in enumerate(jaxpr.invars):
        tags[var] = in_tags[i]
        values[var] = None if in_values is None else in_values[i]
    for eqn in jaxpr.eqns:
        read_in = [read(a) for a in eqn.invars]
        eqn_tags = [t for t, _ in read_in]
        eqn_values = [v for _, v in read_in]
        here = location or where(eqn)
        sub = _called_jaxpr(eqn)
        if sub is not None:
            out_tags, out_values = walk(
                sub, eqn_tags, rule, constant_tag, eqn_values, evaluate=evaluate, location=here
            )
        else:
            out_tags = rule(eqn, eqn_tags, eqn_values, here)
            out_values = [None] * len(eqn.outvars)
            if evaluate:
                result = eqn.primitive.bind(*eqn_values, **eqn.params)
                out_values = result if eqn.primitive.multiple_results else [result]
        for var, tag, value in zip(eqn.outvars, out_tags, out_values):
            tags[var], values[var] = tag, value
    out = [read(a) for a in jaxpr.outvars]
    return [t for t, _ in out], [v for _, v in out]


#: Counter dependence of a value: none, through a power `b**count` with |b| < 1 (it
#: vanishes geometrically as the count grows), or any other way.
CLEAN, GEOMETRIC, RAW = 0, 1, 2
_PASS_THROUGH = frozenset(
    {
        "convert_element_type",
        "broadcast_in_dim",
        "reshape",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
        "neg",
        "transpose",
        "reduce_precision",
    }
)


def counter_rule(first_raw: list):
    r"""The `walk` rule that tracks how step counters reach a map's outputs.

    A tag is `(kind, data)`: `kind` is `CLEAN`, `GEOMETRIC` or `RAW` (see
    above), `data` whether the value depends on the non-counter inputs. A bias
    correction $1/(1 - b^n)$ stays `CLEAN`: $b^n$ is `GEOMETRIC`, a product with
    a geometric factor is geometric, and a constant plus a geometric term
    converges to the constant. Anything else that meets a counter (a schedule
    $\eta(n)$, a warm-up that multiplies the update, `count % k`) is `RAW`.
    `first_raw` receives the location of the first primitive that mixes a `RAW`
    counter value with the data.
    """

    def rule(eqn, tags, values, location):
        kinds = [kind for kind, _ in tags]
        data = any(d for _, d in tags)
        name = eqn.primitive.name
        kind = max(kinds, default=CLEAN)
        if kind == CLEAN:
            pass
        elif name == "pow" and kinds[0] == CLEAN and not tags[0][1]:
            # A base known only at run time (a traced hyperparameter) is taken to decay.
            base = values[0]
            known = base is not None and not isinstance(base, jax.core.Tracer)
            kind = RAW if known and abs(float(base)) >= 1 else GEOMETRIC
        elif name == "mul" and GEOMETRIC in kinds:
            kind = GEOMETRIC
        elif name == "div" and kinds[0] == GEOMETRIC and kinds[1] != GEOMETRIC:
            kind = GEOMETRIC
        elif name in ("add", "sub", "add_any") and GEOMETRIC in kinds and RAW not in kinds:
            constants = [not d for (k, d) in tags if k == CLEAN]
            if not constants:
                kind = GEOMETRIC
            elif all(constants):
                kind, data = CLEAN, any(d for (k, d) in tags if k == GEOMETRIC)
            else:
                kind = RAW
        elif name in _PASS_THROUGH:
            pass
        else:
            kind = RAW
        if kind == RAW and data and not first_raw:
            first_raw.append(f"`{name}` at {location}" if location else f"`{name}`")
        return [(kind, data)] * len(eqn.outvars)

    return rule


def _is_counter_update(jaxpr, index: int) -> bool:
    """Whether output `index` of `jaxpr` is input `index` plus one (a float step counter)."""
    out = jaxpr.outvars[index]
    for eqn in jaxpr.eqns:
        if out in eqn.outvars:
            if eqn.primitive.name != "add":
                return False
            one = [a for a in eqn.invars if isinstance(a, jex_core.Literal)]
            return jaxpr.invars[index] in eqn.invars and len(one) == 1 and one[0].val == 1
    return False


def counter_mask(step, template, args) -> list[bool]:
    r"""Which leaves of the state are step counters; raises if they do more than bias-correct.

    Integer leaves, and float scalars the map updates as `count + 1`, are
    counters. The map's jaxpr is walked (`counter_rule`): counters may reach the
    rest of the state only through terms $b^n$, $|b| < 1$, that vanish as
    $n \to \infty$ (bias corrections). Their effect is then $O(b^{t/h})$ at time
    $t = n h$, beyond every power of $h$, so the modified series is that of the
    map with $b^n = 0$: the counters are held at a burned-in count
    (`driftlab.integrators._layout.BURNED_IN_COUNT`), and linearisations leave them out.
    """
    arrays, static = split(template)
    leaves_with_paths, treedef = jtu.tree_flatten_with_path(arrays)
    leaves = [leaf for _, leaf in leaves_with_paths]
    integer = [jnp.issubdtype(jnp.result_type(leaf), jnp.integer) for leaf in leaves]
    scalar = [jnp.ndim(leaf) == 0 for leaf in leaves]
    if not any(integer) and not any(scalar):
        return [False] * len(leaves)

    def leaves_map(leaves, h):
        return array_leaves(step(eqx.combine(jtu.tree_unflatten(treedef, leaves), static), h, args))

    try:
        closed = jax.make_jaxpr(leaves_map)(leaves, jnp.zeros((), jnp.float64))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as error:
        # TracerBoolConversionError is a ConcretizationTypeError.
        raise InputError(
            f"`step_map`: its update tests `h` or the state in Python ({type(error).__name__}), "
            "so it is not a smooth family in h; an optax schedule with lengths in steps and "
            "its peak as h (e.g. optax.warmup_cosine_decay_schedule(0.0, h, 100, 1000)) does "
            "this. State the schedule in time instead: driftlab.Scheduled(OptaxStepMap(loss, "
            "lambda lr: optax.adamw(lr)), driftlab.OptaxSchedule(schedule, reference_step, "
            "num_steps))."
        ) from None
    counters = [
        i or (s and _is_counter_update(closed.jaxpr, k))
        for k, (i, s) in enumerate(zip(integer, scalar))
    ]
    if not any(counters):
        return counters
    in_tags = [(RAW, False) if c else (CLEAN, True) for c in counters] + [(CLEAN, True)]
    first_raw = []
    out_tags = walk(closed, in_tags, counter_rule(first_raw), (CLEAN, False))[0]
    if any(kind == RAW for (kind, _), c in zip(out_tags, counters) if not c):
        names = ", ".join(
            f"`state{jtu.keystr(path)}`" for (path, _), c in zip(leaves_with_paths, counters) if c
        )
        raise InputError(
            f"`step_map`: time-dependent step. Its update depends on the step counter "
            f"{names} other than through a bias correction 1/(1 - b**count) "
            f"(first at {first_raw[0] if first_raw else 'an unknown primitive'}): a "
            "learning-rate schedule, or another change of the step with time, makes the "
            "map non-autonomous in the step count, which has no limit as h -> 0. Use a "
            "constant step, e.g. `OptaxStepMap(loss, lambda h: optax.adam(h))`, and put "
            "the schedule in time around it: `driftlab.Scheduled(map, schedule)` with a "
            "driftlab schedule or `driftlab.OptaxSchedule(optax_schedule, reference_step, "
            "num_steps)`."
        )
    return counters
