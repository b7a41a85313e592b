r"""How well each flow tracks each optimiser, at step sizes up to and beyond the edge of stability.

    driftlab bench --preset fast    # minutes on 2 cores
    driftlab bench --preset smoke   # < 1 minute (CI: tests/test_benchmarks.py)
    driftlab bench --preset full    # every paired flow, orders 1..6, 16 steps
    python -m benchmarks.flow_error --preset fast  # the same, into benchmarks/results/

For every problem, optimiser and flow (registry names of `driftlab._registry`; the
automatic `ModifiedFlow` as `modified-p`) and every step size on the case's grid of a
dimensionless $x$ in the optimiser's own validity scale (`SCALES`:
$h\lambda_{max}$ from 0.01 to 2.5 for GD-like maps, $h\lambda_P/(1-\beta_2)$ for Adam),
it records:

- the stability index $\max|1-\mu|$ of the map's Jacobian (`driftlab.stability_index`;
  $h\lambda_{max}$ for gradient descent, 2 at the edge of stability);
- the local error (one step, `driftlab.local_error`, $O(h^{p+2})$ for an order-$p$ flow)
  and the global error at a fixed time (`driftlab.global_error`, $O(h^{p+1})$), with the
  principal flow solved on a complex state (`complex_state=True`);
- on the quadratic with GD, the global error in closed form (`quadratic_closed_form`);
- failures, as data: a flow that does not exist at that $h$ (heavy-ball's slow
  manifold beyond $h\lambda < (1-\sqrt\beta)^2$, the principal flow at
  $h\lambda_i = 1$ or where an eigenvalue of the Hessian crosses $1/h$ along GD's path
  (found before solving: `path_spectrum`, recorded per grid point), a solve that blows
  up) is recorded with its message.

Maps with auxiliary state start on the flow's slow manifold (`flow.slow_state`). Local
slopes use the points with $x \le$ `FIT_MAX`, global slopes $x \le$ `GLOBAL_FIT_MAX`,
each at least 10 times above its round-off / solver floor; each is set against the
slope theory backs for the pairing (`expectation`). A flow "tracks" the
optimiser at $h$ when its relative global error is at most `TRACKING_TOLERANCE`; the
report gives the largest $x$ up to which every grid point tracks (points where the flow
does not exist are listed, not counted as the end).

Outputs (in `--output`): `flow_error.json` (every
measurement and `driftlab._io.machine_info()`), `flow_error.md` (verdict, tables) and
figures (`write_figures`).
"""

import argparse
import dataclasses
import json
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from threadpoolctl import threadpool_limits

import driftlab as dl
from driftlab import _registry
from driftlab._io import DEFAULT_OUTPUT, machine_info, write_json_atomic
from driftlab._tree import grad, ravel, tree_norm
from driftlab.analysis._order import above_floor, can_fit, fit_slope

from .._output import command_line, Progress, write_text_atomic
from ._cases import (
    Case,
    COMPLEX_STATE_FLOWS,
    DENSE_PRINCIPAL_LIMIT,
    expectation,
    FIT_MAX,
    GLOBAL_FIT_MAX,
    paired_flows,
    Preset,
    PRESET_GUIDE,
    PRESETS,
    SCALES,
    started,
    TRACKING_TOLERANCE,
)
from ._report import markdown, write_figures


#: What a failed measurement raises: driftlab's own errors, and run-time checks inside a
#: flow (`eqx.error_if`, e.g. a principal flow at h * lambda = 1) surfacing from XLA.
FAILURES = (
    dl.MeasurementError,
    dl.InputError,
    eqx.EquinoxRuntimeError,
    jax.errors.JaxRuntimeError,
    FloatingPointError,
)
#: How a flow says it does not exist at this h (the principal flow at h * lambda_i = 1):
#: such a point is a gap in the grid, not where tracking ends.
DOES_NOT_EXIST = "does not exist"


def _size(tree) -> int:
    return sum(np.size(leaf) for leaf in jtu.tree_leaves(tree))


#: The guard's Hessian eigenvalues for problems above `DENSE_PRINCIPAL_LIMIT`: the top
#: `GUARD_TOP_K` (Lanczos); the matrix-free principal flow treats only its top k exactly,
#: the rest through IGR's coefficient, which has no singularity.
GUARD_TOP_K = 10


@eqx.filter_jit
def _dense_spectra(loss, points, args):
    def eigenvalues(params):
        flat, unravel = ravel(params)
        grad_flat = lambda x: ravel(grad(loss, unravel(x), args))[0]
        return jnp.linalg.eigvalsh(jax.jacfwd(grad_flat)(flat))

    return jax.lax.map(eigenvalues, points)


def _spectra(loss, points, args, size):
    if size <= DENSE_PRINCIPAL_LIMIT:
        return np.asarray(_dense_spectra(loss, points, args))
    count = jtu.tree_leaves(points)[0].shape[0]
    return np.stack(
        [
            dl.hessian_eigenpairs(
                loss, jtu.tree_map(lambda leaf: leaf[i], points), args, k=GUARD_TOP_K
            ).eigenvalues
            for i in range(count)
        ]
    )


def path_spectrum(loss, step, params, h, num_steps, args) -> dict:
    r"""Where GD's path meets $h\lambda_i = 1$, found before a principal flow is solved.

    The principal flow's coefficient $\log(1 - h\lambda_i)$ is singular where an
    eigenvalue of the Hessian crosses $1/h$, and an adaptive solver stalls there. The
    Hessian's eigenvalues are taken at GD's `num_steps + 1` iterates and the midpoints of
    its steps (the flow's real part passes between consecutive iterates); a crossing is a
    change in how many exceed $1/h$ between samples. Returns the smallest
    $|1 - h\lambda_i|$ over the samples, where it occurs (in steps) and that $h\lambda_i$,
    the largest change of a sorted $h\lambda_i$ between neighbouring samples (the sampling's
    resolution: a touch of 1 narrower than it can pass unseen), GD's displacement
    $\|\theta_n - \theta_0\|$, and `crossing`: why the flow does not exist on this path,
    or `None`.
    """
    iterates = dl.iterate(step, params, h, num_steps, args)
    midpoints = jtu.tree_map(lambda y: 0.5 * (y[1:] + y[:-1]), iterates)
    samples = jtu.tree_map(
        lambda y, m: jnp.concatenate([jnp.stack([y[:-1], m], 1).reshape(-1, *y.shape[1:]), y[-1:]]),
        iterates,
        midpoints,
    )
    scaled = h * _spectra(loss, samples, args, _size(params))
    gaps = np.abs(1 - scaled)
    nearest = np.unravel_index(np.argmin(gaps), gaps.shape)
    above = np.sum(scaled > 1, axis=1)
    times = np.arange(len(above)) / 2
    crossing = None
    changed = np.flatnonzero(np.diff(above))
    if changed.size:
        i = changed[0]
        crossing = (
            f"the principal flow does not exist along GD's path: an eigenvalue of the Hessian "
            f"crosses 1/h between steps {times[i]:g} and {times[i + 1]:g} of {num_steps} "
            f"({above[i]} -> {above[i + 1]} with h*lambda > 1), where log(1 - h lambda) is "
            "singular; not solved"
        )
    displacement = jtu.tree_map(lambda y: y[-1] - y[0], iterates)
    return {
        "num_steps": num_steps,
        "num_samples": len(above),
        "min_gap": float(gaps[nearest]),
        "nearest_h_lambda": float(scaled[nearest]),
        "at_step": float(times[nearest[0]]),
        "resolution": float(np.max(np.abs(np.diff(scaled, axis=0)), initial=0.0)),
        "above_one": sorted({int(a) for a in above}),
        "gd_displacement": float(tree_norm(displacement)),
        "crossing": crossing,
    }


def flow_factories(case: Case, problem, step, notes: list) -> dict[str, Callable]:
    """`{label: h -> flow}` for the case's flows; what cannot run is skipped with a note."""
    factories = {}
    names = case.flows if case.flows is not None else paired_flows(case.optimiser)
    for name in names:
        where = case.name
        if name not in _registry.FLOWS:
            notes.append(f"{where}: flow {name!r} is not in the registry yet; skipped.")
            continue
        if name == "principal" and _size(problem.params) > DENSE_PRINCIPAL_LIMIT:
            notes.append(
                f"{where}: dense 'principal' skipped ({_size(problem.params)} parameters > "
                f"{DENSE_PRINCIPAL_LIMIT}: one Hessian eigendecomposition per field "
                "evaluation); 'principal-lanczos' is the matrix-free flow."
            )
            continue
        make = _registry.FLOWS[name]
        options = case.flow_options.get(name, {})
        factories[name] = lambda h, make=make, options=options: dataclasses.replace(
            make(problem, step, h, 1), **options
        )
    if case.orders and "modified" not in _registry.FLOWS:
        notes.append(f"{case.name}: 'modified' is not in the registry yet.")
    elif case.orders:
        make = _registry.FLOWS["modified"]
        for order in case.orders:
            factories[f"modified-{order}"] = lambda h, order=order: make(problem, step, h, order)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return factories


def _start(flow, step, problem, y_init, args):
    """The map's state to start from: on the flow's slow manifold when it has one."""
    slow_state = getattr(flow, "slow_state", None)
    if slow_state is None or step.parameters(y_init) is y_init:
        return y_init
    return slow_state(problem.params, args)


def _short(error: BaseException) -> str:
    message = str(error).strip().split("\n")[0]
    return f"{type(error).__name__}: {message[:300]}"


def _as_record(measurement) -> dict:
    return {
        "error": measurement.error,
        "relative_error": measurement.error / measurement.scale,
        "floor": measurement.floor,
        "at_floor": measurement.at_floor,
        "num_steps": measurement.num_steps,
        "t": measurement.t,
    }


def measure(
    step, make_flow, problem, y_init, h, t_end, args, *, complex_state: bool = False
) -> dict:
    """Local and global error of one flow at one `h`; failures and warnings are recorded."""
    record = {"local": None, "global": None, "failure": None, "warnings": []}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            flow = make_flow(h)
            y0 = _start(flow, step, problem, y_init, args)
            record["order"] = int(flow.order)
        except (*FAILURES, AttributeError, TypeError, ValueError) as error:
            # A flow that does not apply to this map (or this h) is recorded, not raised.
            record["failure"] = _short(error)
        else:
            options = {"complex_state": complex_state}
            for kind in ("local", "global"):
                try:
                    if kind == "local":
                        result = dl.local_error(step, flow, y0, h, args, **options)
                    else:
                        result = dl.global_error(step, flow, y0, h, t_end, args, **options)
                    record[kind] = _as_record(result)
                except FAILURES as error:
                    record[kind] = {"failure": _short(error)}
    messages = {f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught}
    record["warnings"] = sorted(messages)
    record["seconds"] = time.perf_counter() - start
    return record


def _status(record, kind) -> str:
    if record["failure"]:
        return "failed"
    result = record[kind]
    return "failed" if "failure" in result else f"{result['error']:.3g}"


def _usable(record, kind):
    result = None if record["failure"] else record[kind]
    return result if result is not None and "failure" not in result else None


def fit(records, kind: str) -> dict:
    """The log-log slope of `kind` errors on the usable points of one flow's sweep.

    Usable: x at most `FIT_MAX` (local) or `GLOBAL_FIT_MAX` (global) and the error at
    least `FLOOR_MARGIN` (10) times its floor. Where the closed form is known (`closed_form` in the
    records) its slope on the same points is fitted too: the expectation on that range.
    """
    fit_max = FIT_MAX if kind == "local" else GLOBAL_FIT_MAX
    results = [_usable(record, kind) for record in records]
    hs = np.array([record["h"] for record in records])
    scaled = np.array([record["h_lambda"] for record in records])
    errors = np.array([np.nan if r is None else r["error"] for r in results])
    floors = np.array([np.nan if r is None else r["floor"] for r in results])
    closed = np.array([r.get("closed_form", np.nan) if r else np.nan for r in results])
    used = above_floor(errors, floors) & (scaled <= fit_max)
    slope = stderr = intercept = closed_slope = np.nan
    if can_fit(hs, used):
        slope, stderr, intercept = fit_slope(hs, errors, used)
        if np.all(closed[used] > 0):
            closed_slope = fit_slope(hs, closed, used)[0]
    finite = np.isfinite(errors)
    return {
        "kind": kind,
        "hs": hs,
        "errors": errors,
        "floors": floors,
        "used": used,
        "slope": slope,
        "slope_stderr": stderr,
        "intercept": intercept,
        "num_points": int(used.sum()),
        "closed_form_slope": closed_slope,
        # No successful point clear of its floor: the errors are round-off.
        "at_floor": bool(finite.any() and not above_floor(errors, floors)[finite].any()),
        "max_relative_error": max(
            (r["relative_error"] for r in results if r is not None), default=np.nan
        ),
    }


def tracking_limit(records) -> tuple[float, str | None, list[float]]:
    """The largest x up to which every point tracks, why the next one fails, and the gaps.

    Gaps are the points where the flow says it does not exist (`DOES_NOT_EXIST`).
    """
    limit, reason, gaps = 0.0, None, []
    for record in records:
        result = None if record["failure"] else record["global"]
        message = record["failure"] or (result or {}).get("failure") or ""
        if DOES_NOT_EXIST in message:
            gaps.append(record["h_lambda"])
            continue
        if result is None or "failure" in result:
            reason = f"fails at x={record['h_lambda']:g}"
            break
        if not result["relative_error"] <= TRACKING_TOLERANCE:
            reason = f"relative error {result['relative_error']:.2g} at {record['h_lambda']:g}"
            break
        limit = record["h_lambda"]
    return limit, reason, gaps


def quadratic_closed_form(problem, name: str, h: float, num_steps: int) -> float | None:
    r"""GD's global error against a truncated-logarithm flow on the quadratic, in closed form.

    GD's exact modified field is $\frac1h\log(I - hA)$; gradient flow, IGR and
    `modified-p` keep its series $-\sum_{k=1}^{p+1}\frac{(hA)^k}{kh}$ to $p = 0, 1, p$, the
    principal flow all of it. Per eigenpair $(\lambda, c)$ of $A$ and $y_0$, with
    $x = h\lambda$ and $n$ steps: $-c\,(1-x)^n\,\mathrm{expm1}(n\sum_{k>p+1}x^k/k)$ (the tail
    summed directly for $x \le 1/2$, so no cancellation), else the plain difference.
    `None` for a flow that is not of this form.
    """
    if name == "principal":
        return 0.0
    orders = {"gradient": 0, "igr": 1}
    if name.startswith("modified-"):
        orders[name] = int(name.split("-")[1])
    if name not in orders:
        return None
    kept = orders[name] + 1
    eigenvalues, vectors = np.linalg.eigh(np.asarray(problem.A))
    coefficients = vectors.T @ np.asarray(problem.params)
    total = 0.0
    for lam, c in zip(eigenvalues, coefficients):
        x = h * lam
        gd = (1 - x) ** num_steps
        if x <= 0.5:
            k = np.arange(kept + 1, kept + 400)
            tail = np.sum(x**k / k)
            difference = -gd * np.expm1(num_steps * tail)
        else:
            field = -sum(x**k / k for k in range(1, kept + 1))
            difference = gd - np.exp(num_steps * field)
        total += (c * difference) ** 2
    return float(np.sqrt(total))


def run_case(case: Case, preset: Preset, progress: Progress, notes: list) -> dict:
    """Every measurement of one case: its scale, stability indices, errors, fits, drift."""
    problem = _registry.lookup(_registry.PROBLEMS, "problem", case.problem)(**case.problem_options)
    problem = started(problem, case.start)
    step, y_init, args = _registry.lookup(_registry.OPTIMISERS, "optimiser", case.optimiser)(
        problem, case.hyper
    )
    scale = SCALES[case.scale]
    h_unit, time_unit = scale.unit(problem, step, y_init, args)
    horizon = case.horizon if case.horizon is not None else preset.horizon
    grid = case.grid or preset.scaled_steps
    t_end = horizon * float(step.duration(time_unit, args))
    label = case.name
    progress(f"{label}: x = h / {h_unit:.4g} ({scale.label}), global errors at t = {t_end:.4g}")
    stability = {}
    for scaled in grid:
        try:
            stability[scaled] = dl.stability_index(step, y_init, scaled * h_unit, args)
        except FAILURES as error:
            stability[scaled] = np.nan
            notes.append(f"{label}: stability index at x={scaled:g} failed: {error}")
    case_notes = []
    factories = flow_factories(case, problem, step, case_notes)
    notes.extend(case_notes)
    closed_form = case.problem == "quadratic" and case.optimiser == "gd"
    spectra = {}
    if case.optimiser == "gd" and any(name in COMPLEX_STATE_FLOWS for name in factories):
        for scaled in grid:
            h = scaled * h_unit
            num_steps = int(round(t_end / float(step.duration(h, args))))
            spectra[scaled] = path_spectrum(problem.loss, step, y_init, h, num_steps, args)
            progress(
                f"{label} x={scaled:g}: min |1 - h lambda_i| along GD's path "
                f"{spectra[scaled]['min_gap']:.3g}"
                + (", crosses 1/h" if spectra[scaled]["crossing"] else "")
            )
    flows = {}
    for name, make_flow in factories.items():
        records = []
        for scaled in grid:
            h = scaled * h_unit
            record = {"h": h, "h_lambda": scaled, "stability_index": stability[scaled]}
            crossing = spectra.get(scaled, {}).get("crossing")
            if name in COMPLEX_STATE_FLOWS and crossing:
                record |= {"local": None, "global": None, "failure": crossing}
                record |= {"warnings": [], "seconds": 0.0}
            else:
                record |= measure(
                    step,
                    make_flow,
                    problem,
                    y_init,
                    h,
                    t_end,
                    args,
                    complex_state=name in COMPLEX_STATE_FLOWS,
                )
            result = _usable(record, "global")
            if closed_form and result is not None:
                exact = quadratic_closed_form(problem, name, h, result["num_steps"])
                if exact is not None:
                    result["closed_form"] = exact
            records.append(record)
            progress(
                f"{label} {name} x={scaled:g} (index {stability[scaled]:.3g}): "
                f"local {_status(record, 'local')}, global {_status(record, 'global')}"
                f" ({record['seconds']:.1f}s)"
            )
        fits = {kind: fit(records, kind) for kind in ("local", "global")}
        order = next((r["order"] for r in records if "order" in r), None)
        expected = expectation(case.problem, case.optimiser, name, order)
        limit, reason, gaps = tracking_limit(records)
        flows[name] = {
            "order": order,
            "expected": {
                "local": expected.local,
                "global": expected.global_,
                "reason": expected.reason,
            },
            "complex_state": name in COMPLEX_STATE_FLOWS,
            "measurements": records,
            "fits": {kind: _public_fit(result) for kind, result in fits.items()},
            "tracks_up_to": limit,
            "stops_tracking": reason,
            "does_not_exist_at": gaps,
            "_fits": fits,
        }
    drift = run_drift(case, preset, problem, step, y_init, args, h_unit, factories, progress)
    return {
        "problem": case.problem_label or case.problem,
        "optimiser": case.optimiser_label,
        "hyper": case.hyper,
        "problem_options": case.problem_options,
        "start": dataclasses.asdict(case.start) if case.start else None,
        "flow_options": case.flow_options,
        "path_spectrum": {str(x): spectrum for x, spectrum in spectra.items()},
        "num_parameters": _size(problem.params),
        "scale": scale.label,
        "scale_description": scale.description,
        "h_unit": h_unit,
        "lambda_max": 1.0 / h_unit if case.scale == "curvature" else None,
        "t_end": t_end,
        "grid": list(grid),
        "stability_index": {str(k): v for k, v in stability.items()},
        "flows": flows,
        "drift": drift,
    }


def _public_fit(result) -> dict:
    keys = ("slope", "slope_stderr", "intercept", "num_points", "used", "closed_form_slope")
    return {key: result[key] for key in keys} | {
        "at_floor": result["at_floor"],
        "max_relative_error": result["max_relative_error"],
    }


def run_drift(case, preset, problem, step, y_init, args, h_unit, factories, progress):
    """`driftlab.drift` of each flow along one trajectory at `preset.drift_scaled_step`."""
    if not case.drift:
        return []
    h = preset.drift_scaled_step * h_unit
    results = []
    for name, make_flow in factories.items():
        if case.drift is not True and name not in case.drift:
            continue
        entry = {"flow": name, "h": h, "h_lambda": preset.drift_scaled_step}
        start = time.perf_counter()
        try:
            flow = make_flow(h)
            y0 = _start(flow, step, problem, y_init, args)
            result = dl.drift(
                step,
                flow,
                y0,
                h,
                preset.drift_steps,
                args,
                complex_state=name in COMPLEX_STATE_FLOWS,
            )
            entry |= {
                "times": result.times,
                "errors": result.errors,
                "relative_final": float(result.errors[-1] / result.map_norms[0]),
                "_result": result,
            }
            status = f"final distance {result.errors[-1]:.3g}"
        except FAILURES as error:
            entry["failure"] = _short(error)
            status = "failed"
        progress(
            f"{case.name} drift of {name} over "
            f"{preset.drift_steps} steps: {status} ({time.perf_counter() - start:.1f}s)"
        )
        results.append(entry)
    return results


def _strip_private(value):
    """The JSON view of a result: no `_`-prefixed plotting objects, NaN as `null`."""
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list | tuple):
        return [_strip_private(v) for v in value]
    if isinstance(value, np.ndarray):
        return _strip_private(value.tolist())
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


#: The command recorded in the results of a run started from Python.
PROGRAM = "driftlab bench --suite flows"


def run(
    preset_name: str,
    output: str = DEFAULT_OUTPUT,
    *,
    figures: bool = True,
    argv=(),
    only=(),
    program: str = PROGRAM,
) -> dict:
    """Run a preset and write `flow_error.json`, `flow_error.md` and the figures to `output`.

    `only` names cases (`Case.name`) to run alone: they replace their entries in the
    preset's existing `flow_error.json` in `output` (or are appended), the rest is kept.
    """
    preset = PRESETS[preset_name]
    selected = [case for case in preset.cases if not only or case.name in only]
    unknown = set(only) - {case.name for case in preset.cases}
    if unknown:
        raise dl.InputError(
            f"no case {sorted(unknown)} in preset {preset_name!r}; its cases: "
            f"{[case.name for case in preset.cases]}."
        )
    duration, purpose = PRESET_GUIDE[preset_name]
    guide = f"Flow sweep, {preset_name} preset ({duration} on 2 CPU cores): {purpose}."
    print(textwrap.fill(guide, 88), flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    progress = Progress()
    notes: list[str] = []
    # OpenBLAS's threads contend with XLA's on a shared 2-core machine: a 310 x 310 eigh
    # took 2 s with 2 threads against 8 ms with one (the dense principal flow 3 s / 47 ms
    # per field evaluation).
    with threadpool_limits(1):
        cases = [run_case(case, preset, progress, notes) for case in selected]
    kept = []
    if only:
        with open(os.path.join(output, "flow_error.json")) as file:
            previous = json.load(file)
        if previous["preset"] != preset_name:
            raise dl.InputError(
                f"{output}/flow_error.json holds the {previous['preset']!r} preset, not "
                f"{preset_name!r}: run the whole preset first."
            )
        names = {(case["problem"], case["optimiser"]) for case in cases}
        kept = [c for c in previous["cases"] if (c["problem"], c["optimiser"]) not in names]
        notes = [n for n in previous["notes"] if not any(n.startswith(o) for o in only)] + notes
    result = {
        "preset": preset_name,
        "command": command_line(program, argv or ["--preset", preset_name]),
        "machine": machine_info(),
        "scaled_steps": list(preset.scaled_steps),
        "fit_max": FIT_MAX,
        "global_fit_max": GLOBAL_FIT_MAX,
        "tracking_tolerance": TRACKING_TOLERANCE,
        "horizon": preset.horizon,
        "drift_steps": preset.drift_steps,
        "notes": notes,
        "cases": cases,
    }
    order = [case.name for case in preset.cases]
    merged = sorted(
        kept + [_strip_private(case) for case in cases],
        key=lambda c: order.index(f"{c['problem']}/{c['optimiser']}"),
    )
    paths = write_figures(cases, output, merged) if figures else []
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    result["figures"] = [os.path.basename(p) for p in paths]
    public = _strip_private(result) | {"cases": merged}
    if only:
        public["updated_cases"] = list(only)
        public["figures"] = sorted(set(previous["figures"]) | set(public["figures"]))
    json_path = write_json_atomic(public, os.path.join(output, "flow_error.json"))
    md_path = write_text_atomic(
        markdown(public, public["figures"]), os.path.join(output, "flow_error.md")
    )
    print(f"wrote {json_path}, {md_path} and {len(paths)} figures in {result['seconds']:.0f}s")
    return public


def build_parser(prog: str = PROGRAM, default_output: str = DEFAULT_OUTPUT):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--output", default=default_output, help="directory for JSON, MD and PNGs")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        help="run only this case (problem/optimiser as the tables name it; repeatable) and "
        "update its entries in the existing flow_error.json",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite flow_error.md from flow_error.json"
    )
    return parser


def main(argv=None, *, prog: str = PROGRAM, default_output: str = DEFAULT_OUTPUT) -> int:
    """The suite's own command line (`--case`, `--report-only`, `--no-figures`), as `prog`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog, default_output).parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.output, "flow_error.json")) as file:
            result = json.load(file)
        text = markdown(result, result["figures"])
        print(write_text_atomic(text, os.path.join(args.output, "flow_error.md")))
        return 0
    run(
        args.preset,
        args.output,
        figures=not args.no_figures,
        argv=argv,
        only=tuple(args.case),
        program=prog,
    )
    return 0
