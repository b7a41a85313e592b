"""Weak error and weak order of a stochastic modified equation against its minibatch optimiser."""

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.stats

from .._custom_types import Y
from .._errors import (
    check_factory,
    check_float64_tree,
    check_step_size,
    InputError,
    MeasurementError,
    RoundoffWarning,
)
from .._tree import split
from ..flows._sme import AbstractStochasticModifiedEquation, sde_euler_solve
from ..integrators._maps import AbstractStepMap
from ..integrators._random import AbstractRandomBatchMap, RandomBatch
from ._order import above_floor, can_fit, check_step_grid, fit_slope


#: Standard errors a difference must clear: the Monte Carlo part of a point's floor.
Z_SCORE = 3.0
#: Euler–Maruyama levels per h-point: dt, dt/2, dt/4 (two Talay–Tubaro extrapolations).
NUM_LEVELS = 3


def _component_variances(values: np.ndarray) -> np.ndarray:
    """The variance of the sample mean of each component of per-sample values `(S, ...)`."""
    flat = values.reshape(values.shape[0], -1)
    return flat.var(axis=0, ddof=1) / flat.shape[0]


def _stats(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Sample mean of per-sample values `(S, ...)`, and the standard error of its norm."""
    flat = values.reshape(values.shape[0], -1)
    return flat.mean(axis=0), math.sqrt(flat.var(axis=0, ddof=1).sum() / flat.shape[0])


class WeakError(eqx.Module):
    r"""A weak error $|\mathbb E\varphi(\theta_n) - \mathbb E\varphi(\Theta(nh))|$, by Monte Carlo.

    **Attributes:**

    - `h`, `t_end`, `num_steps` ($n = t_{end}/h$), `num_samples` and
      `num_sde_samples` (SGD and SDE paths).
    - `error`: the Euclidean norm of the difference of the two sample means of
      $\varphi$ (any shape).
    - `stderr`: the Monte Carlo standard error of that difference (independent SGD
      and SDE samples).
    - `solver_error`: the estimated weak error of the SDE side's expectation,
      Euler–Maruyama at steps `dt`, `dt/2`, `dt/4` on one Brownian path per sample,
      extrapolated twice (Talay–Tubaro); see `weak_error`.
    - `solver_dt`: the finest Euler–Maruyama step.
    - `component_stderrs`, `component_solver_errors`: the standard error of the
      difference and the solver's estimated error for each component of $\varphi$
      (flattened), to fit each component's weak order on its own.
    - `sgd_expectation`, `sde_expectation`: the two sample means, flattened.
    - `sgd_samples_per_second`, `sde_samples_per_second`: measured throughput
      (compiled, one run; an SDE sample costs all three levels).
    """

    h: float
    t_end: float
    num_steps: int
    num_samples: int
    num_sde_samples: int
    error: float
    stderr: float
    solver_error: float
    solver_dt: float
    sgd_expectation: np.ndarray
    sde_expectation: np.ndarray
    sgd_samples_per_second: float
    sde_samples_per_second: float
    component_stderrs: np.ndarray | None = None
    component_solver_errors: np.ndarray | None = None

    @property
    def floor(self) -> float:
        """`3 stderr + solver_error`: differences below it are not resolved."""
        return Z_SCORE * self.stderr + self.solver_error


class WeakOrderEstimate(eqx.Module):
    r"""A measured weak order: weak errors over a grid of step sizes, floors and fitted slope.

    **Attributes:**

    - `hs`, `errors`, `stderrs` (Monte Carlo), `solver_errors` (SDE solver), and
      `floors` $= 3\,$`stderrs` $+$ `solver_errors` per point (zeros for exact errors).
    - `used`: points whose error is at least `margin` times their floor (and
      positive); the others are listed with their reason in `excluded`.
    - `slope`, `slope_stderr`, `intercept` of the fit of $\log_2$ error on
      $\log_2 h$; `confidence_interval`: the 95% interval of the slope (Student t);
      `constant` $= 2^{\text{intercept}}$, the $C$ of error $\approx C h^{p}$.
    - `expected`: the SME's weak order; `sde_name`, `map_name`, `test_name`, `t_end`,
      `num_samples`; `sgd_samples_per_second`, `sde_samples_per_second`.
    - `signed_errors`: for a scalar $\varphi$, $\mathbb E\varphi(\theta_n) -
      \mathbb E\varphi(\Theta)$ with its sign (a sign change along the grid means
      two error terms cancel there), else `None`.
    """

    sde_name: str = eqx.field(static=True)
    map_name: str = eqx.field(static=True)
    test_name: str = eqx.field(static=True)
    hs: np.ndarray
    errors: np.ndarray
    stderrs: np.ndarray
    solver_errors: np.ndarray
    floors: np.ndarray
    used: np.ndarray
    slope: float
    slope_stderr: float
    intercept: float
    confidence_interval: tuple[float, float]
    expected: float
    margin: float
    t_end: float
    num_samples: int = 0
    sgd_samples_per_second: float = math.nan
    sde_samples_per_second: float = math.nan
    signed_errors: np.ndarray | None = None

    @classmethod
    def fit(
        cls,
        hs,
        errors,
        *,
        expected: float,
        stderrs=None,
        solver_errors=None,
        margin: float = 2.0,
        t_end: float = math.nan,
        sde_name: str = "exact",
        map_name: str = "RandomBatchSGD",
        test_name: str = "phi",
        strict: bool = True,
        **extra,
    ) -> "WeakOrderEstimate":
        """Fit the slope of `errors` against `hs` on the points clear of their floors.

        `stderrs` and `solver_errors` default to zero (exact errors, e.g. from
        `sgd_moments` / `sme_moments`). **Raises:** `MeasurementError` when fewer
        than 3 points are usable, unless `strict=False`: then the slope, its error,
        interval and intercept are NaN and the points are kept for the record.
        """
        order = np.argsort(np.asarray(hs, dtype=np.float64))
        hs = check_step_grid(hs)
        if len(errors) != hs.size:
            raise InputError(f"`errors` needs one value per distinct step size ({hs.size}).")
        zeros = np.zeros(hs.size)
        errors, stderrs, solver_errors = (
            zeros if values is None else np.asarray(values, dtype=np.float64)[order]
            for values in (errors, stderrs, solver_errors)
        )
        floors = Z_SCORE * stderrs + solver_errors
        used = above_floor(errors, floors, margin)
        if not can_fit(hs, used) and strict:
            raise MeasurementError(
                f"only {int(used.sum())} of {hs.size} weak errors lie clearly above their "
                f"Monte Carlo / solver floors (errors {errors.tolist()}, floors "
                f"{floors.tolist()}); use more samples, larger step sizes or a longer `t_end`."
            )
        if not can_fit(hs, used):
            slope = stderr = intercept = half = math.nan
        else:
            slope, stderr, intercept = fit_slope(hs, errors, used)
            half = scipy.stats.t.ppf(0.975, used.sum() - 2) * stderr
        return cls(
            sde_name=sde_name,
            map_name=map_name,
            test_name=test_name,
            hs=hs,
            errors=errors,
            stderrs=stderrs,
            solver_errors=solver_errors,
            floors=floors,
            used=used,
            slope=slope,
            slope_stderr=stderr,
            intercept=intercept,
            confidence_interval=(slope - half, slope + half),
            expected=float(expected),
            margin=float(margin),
            t_end=float(t_end),
            **extra,
        )

    @property
    def constant(self) -> float:
        return float(2.0**self.intercept)

    @property
    def excluded(self) -> list[str]:
        """A line per point left out of the fit, saying why."""
        return [
            f"h={h:.4g}: error {e:.3g} not above {self.margin:g} x floor {f:.3g} "
            f"({Z_SCORE:g} x Monte Carlo stderr {s:.3g} + solver {v:.3g})"
            for h, e, s, v, f, u in zip(
                self.hs, self.errors, self.stderrs, self.solver_errors, self.floors, self.used
            )
            if not u
        ]

    def agrees(self, tolerance: float) -> bool:
        """Whether the fitted slope is within `tolerance` of the expected weak order."""
        return abs(self.slope - self.expected) <= tolerance

    def to_dict(self) -> dict:
        return {
            "kind": "weak",
            "map": self.map_name,
            "sde": self.sde_name,
            "test_fn": self.test_name,
            "t_end": self.t_end,
            "num_samples": self.num_samples,
            "hs": [float(h) for h in self.hs],
            "errors": [float(e) for e in self.errors],
            "stderrs": [float(s) for s in self.stderrs],
            "solver_errors": [float(s) for s in self.solver_errors],
            "floors": [float(f) for f in self.floors],
            "used": [bool(u) for u in self.used],
            "slope": self.slope,
            "slope_stderr": self.slope_stderr,
            "confidence_interval": list(self.confidence_interval),
            "intercept": self.intercept,
            "constant": self.constant,
            "expected": self.expected,
            "excluded": self.excluded,
            "sgd_samples_per_second": self.sgd_samples_per_second,
            "sde_samples_per_second": self.sde_samples_per_second,
            "signed_errors": None
            if self.signed_errors is None
            else [float(e) for e in self.signed_errors],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"weak error of {self.map_name} against {self.sde_name} on {self.test_name}"
            + (f" at t = {self.t_end:g}" if math.isfinite(self.t_end) else "")
            + (f", {self.num_samples} samples" if self.num_samples else ""),
            f"{'h':>12} {'error':>12} {'MC stderr':>12} {'solver':>12}  used",
        ]
        for h, e, s, v, u in zip(self.hs, self.errors, self.stderrs, self.solver_errors, self.used):
            lines.append(f"{h:12.4e} {e:12.4e} {s:12.4e} {v:12.4e}  {'yes' if u else 'no (floor)'}")
        low, high = self.confidence_interval
        lines.append(
            f"slope {self.slope:.3f} +- {self.slope_stderr:.3f} (95% CI [{low:.2f}, {high:.2f}]; "
            f"expected {self.expected:g}); constant {self.constant:.3g}"
        )
        return "\n".join(lines)


@eqx.filter_jit
def _sgd_values(step, sde, y0, h, num_steps, data, keys, test_fn):
    def one(key):
        # The loop carries the state's arrays; a model's static leaves (its activation) stay out.
        state, static = split(step.keyed(y0, key))
        advance = lambda _, s: split(step(eqx.combine(s, static), h, data))[0]
        final = eqx.combine(jax.lax.fori_loop(0, num_steps, advance, state), static)
        return test_fn(sde.observe(step.unkeyed(final)))

    return jax.vmap(one)(keys)


@eqx.filter_jit
def _sde_values(sde, y0, t_end, dt, tol, keys, test_fn, max_steps):
    saveat = diffrax.SaveAt(t1=True)

    def one(key):
        ys = sde_euler_solve(sde, y0, t_end, dt, key, tol, saveat, max_steps)
        arrays, static = split(ys)
        return test_fn(eqx.combine(jax.tree_util.tree_map(lambda x: x[0], arrays), static))

    return jax.vmap(one)(keys)


def _timed_in_chunks(fn, keys, chunk_size):
    """`fn` over `keys` in equal chunks (the last padded, so that `fn` compiles once).

    **Returns:** the values and the samples per second, timed on the chunks after
    the first (which compiles); a single chunk is run a second time to time it.
    """
    num = len(keys)
    size = min(chunk_size, num)
    padded = jnp.concatenate([keys, keys[: -num % size]]) if num % size else keys
    chunks = [padded[i : i + size] for i in range(0, len(padded), size)]
    values = [np.asarray(fn(chunks[0]))]
    start = time.perf_counter()
    timed = [np.asarray(fn(chunk)) for chunk in chunks[1:]] or [np.asarray(fn(chunks[0]))]
    rate = size * len(timed) / (time.perf_counter() - start)
    values += timed if len(chunks) > 1 else []
    return np.concatenate(values)[:num], rate


def weak_error(
    step: AbstractRandomBatchMap,
    sde: AbstractStochasticModifiedEquation,
    y0: Y,
    h: float,
    t_end: float,
    test_fn: Callable[[Y], jax.Array],
    num_samples: int,
    key,
    *,
    num_sde_samples: int | None = None,
    substeps: int = 2,
    chunk_size: int = 512,
    max_steps: int | None = None,
) -> WeakError:
    r"""The weak error $|\mathbb E\varphi(\theta_n) - \mathbb E\varphi(\Theta(nh))|$ by Monte Carlo.

    Runs `num_samples` independent paths of the minibatch optimiser (`step`,
    vmapped, one PRNG key each, on `sde.data`) and `num_samples` SDE paths, and
    compares $\varphi$ on the SDE's state: `sde.observe` of the optimiser's state
    (all of it for SGD, RMSProp and Adam; the parameters for momentum). Every SDE path is one
    `diffrax.VirtualBrownianTree`, solved by Euler–Maruyama at
    $\mathrm{dt} = h/$`substeps`, $\mathrm{dt}/2$ and $\mathrm{dt}/4$: common random
    numbers across the levels. Euler–Maruyama has weak order 1 and an error expansion
    $C_1\,\mathrm{dt} + C_2\,\mathrm{dt}^2 + \dots$ (Talay & Tubaro 1990; it needs smooth
    coefficients, which the centred-gradient diffusion is, where $\Sigma^{1/2}$ would not
    be), so $T(\mathrm{dt}) = 2E(\mathrm{dt}/2) - E(\mathrm{dt})$ has weak error
    $O(\mathrm{dt}^2)$: the point's SDE expectation is $T(\mathrm{dt}/2)$ and its solver
    error is estimated as $|T(\mathrm{dt}) - T(\mathrm{dt}/2)|/3$ (plus 2 standard
    errors of that per-path difference). Plain Euler–Maruyama at a step much finer
    than $h$ would not do: the solver's $O(\mathrm{dt})$ error must fall below the
    order-2 SME's $O(h^2)$ error, i.e. $\mathrm{dt} \ll h^2$.

    **Arguments:**

    - `step`: a random-batch map (`driftlab.integrators.RandomBatchSGD`, or
      `RandomBatch` of a map with state); `sde`: its SDE at step `h`
      (e.g. `StochasticModifiedEquation.of(step, data, h, order)`,
      `RMSPropSME.of(step, data, h, order)`), which refuses a `step` in another
      sampling model or scaling.
    - `y0`: the optimiser's initial state without its key (the parameters for
      SGD; e.g. `RMSPropState(params, nu)`); `h`, `t_end` (a multiple of `h`).
    - `test_fn`: $\varphi$, SDE state $\mapsto$ array (any shape; the error is the
      norm); a non-finite value raises `MeasurementError`.
    - `num_samples`, `key` (a `jax.random.key`); `num_sde_samples`: SDE paths, if
      not `num_samples` (an SDE path costs hundreds of SGD paths on a network: spend
      the samples where the variance is cheapest to reduce).
    - `substeps`: coarse Euler–Maruyama steps per `h`; `chunk_size`: paths per
      vmapped batch; `max_steps`: the solver's static step bound (pass the largest
      over a sweep to compile once). Throughput is timed on the chunks after the
      first, which compiles.

    **Returns:** a `WeakError`.
    """
    if not isinstance(sde, AbstractStochasticModifiedEquation):
        raise InputError(
            "`sde` must be a driftlab.StochasticModifiedEquation or another "
            f"AbstractStochasticModifiedEquation, got {type(sde).__name__}."
        )
    sde.check_step(step)
    check_float64_tree(y0, "y0")
    h, t_end = check_step_size(h), check_step_size(t_end, "t_end")
    if abs(float(sde.h) - h) > 1e-12 * h:
        raise InputError(f"`sde` was built for h={float(sde.h):g} but `h` is {h:g}.")
    num_steps = int(round(t_end / h))
    if num_steps < 1 or abs(num_steps * h - t_end) > 1e-9 * t_end:
        raise InputError(f"`t_end` {t_end:g} must be a positive multiple of `h` {h:g}.")
    for name, value in (("num_samples", num_samples), ("num_sde_samples", num_sde_samples)):
        if value is not None and (not isinstance(value, int) or value < 2):
            raise InputError(f"`{name}` must be an integer >= 2, got {value!r}.")
    if not isinstance(substeps, int) or substeps < 1:
        raise InputError(f"`substeps` must be a positive integer, got {substeps!r}.")
    dt = h / substeps
    fine_steps = num_steps * substeps * 2 ** (NUM_LEVELS - 1)
    max_steps = fine_steps + 1 if max_steps is None else max(max_steps, fine_steps + 1)
    sgd_key, sde_key = jr.split(key)
    sgd_keys = jr.split(sgd_key, num_samples)
    sde_keys = jr.split(sde_key, num_samples if num_sde_samples is None else num_sde_samples)
    tol = dt / 2**NUM_LEVELS

    start = sde.observe(y0)
    if not np.all(np.isfinite(np.asarray(test_fn(start)))):
        raise InputError(
            "`test_fn` is not finite at the initial state; pass a test function with finite "
            "values (e.g. a polynomial of the state)."
        )
    # Numbers as arrays, not static Python scalars: one compilation serves every h and level.
    h_, steps_, t_end_, tol_ = (jnp.asarray(x) for x in (h, num_steps, t_end, tol))

    def run_sgd(keys):
        return _sgd_values(step, sde, y0, h_, steps_, sde.data, keys, test_fn)

    def run_sde(keys):
        # One Brownian tree per key, queried at every level: common random numbers.
        levels = [
            _sde_values(sde, start, t_end_, dt_, tol_, keys, test_fn, max_steps)
            for dt_ in (jnp.asarray(dt / 2**level) for level in range(NUM_LEVELS))
        ]
        return jnp.stack(levels, axis=1)

    sgd_values, sgd_rate = _timed_in_chunks(run_sgd, sgd_keys, chunk_size)
    levels, sde_rate = _timed_in_chunks(run_sde, sde_keys, chunk_size)
    if not (np.all(np.isfinite(sgd_values)) and np.all(np.isfinite(levels))):
        raise MeasurementError(
            f"non-finite values of `test_fn` at h={h:g}: the optimiser or its SDE diverged, "
            "or `test_fn` is not finite there; use a smaller `h` or a finite `test_fn`."
        )
    coarse = 2 * levels[:, 1] - levels[:, 0]
    fine = 2 * levels[:, 2] - levels[:, 1]
    sgd_mean, sgd_se = _stats(sgd_values)
    sde_mean, sde_se = _stats(fine)
    change_mean, change_se = _stats(coarse - fine)
    return WeakError(
        h=h,
        t_end=t_end,
        num_steps=num_steps,
        num_samples=num_samples,
        num_sde_samples=len(sde_keys),
        error=float(np.linalg.norm(sgd_mean - sde_mean)),
        stderr=math.hypot(sgd_se, sde_se),
        solver_error=float((np.linalg.norm(change_mean) + 2 * change_se) / 3),
        solver_dt=dt / 2 ** (NUM_LEVELS - 1),
        sgd_expectation=sgd_mean,
        sde_expectation=sde_mean,
        sgd_samples_per_second=float(sgd_rate),
        sde_samples_per_second=float(sde_rate),
        component_stderrs=np.sqrt(_component_variances(sgd_values) + _component_variances(fine)),
        component_solver_errors=(
            np.abs(change_mean) + 2 * np.sqrt(_component_variances(coarse - fine))
        )
        / 3,
    )


def _map_name(step) -> str:
    if isinstance(step, RandomBatch):
        return f"RandomBatch({type(step.step_map).__name__})"
    return type(step).__name__


def weak_order_of_accuracy(
    step: AbstractRandomBatchMap | Callable[[float], AbstractRandomBatchMap],
    make_sde: Callable[[float], AbstractStochasticModifiedEquation],
    y0: Y,
    hs: Sequence[float],
    t_end: float,
    test_fn: Callable[[Y], jax.Array],
    num_samples: int,
    key,
    *,
    test_name: str | None = None,
    num_sde_samples: int | None = None,
    substeps: int = 2,
    margin: float = 2.0,
    chunk_size: int = 512,
    strict: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> WeakOrderEstimate:
    r"""The weak order of `make_sde(h)` against `step`: `weak_error` over `hs`, then a slope fit.

    `step` is one random-batch map for every `h`, or a function `h -> map` for
    optimisers whose hyperparameters scale with `h` (RMSProp at $1 - \rho = c_vh$:
    `lambda h: RandomBatch(RMSProp(loss, rho=1 - c * h))`).

    Points whose error is below `margin` times its floor (3 Monte Carlo standard
    errors plus the solver's estimated weak error) are left out of the fit and
    listed in `excluded`; a `RoundoffWarning` says so. Each `h` uses its own
    fold of `key`; `t_end` must be a multiple of every `h`.

    **Returns:** a `WeakOrderEstimate` whose `expected` is the SME's `order`.

    **Raises:** `InputError` for bad arguments, `MeasurementError` when fewer
    than 3 points clear their floors (with `strict=False`, the estimate is returned
    with a NaN slope instead, its points kept).
    """
    grid = check_step_grid(hs)
    check_factory(
        make_sde,
        "make_sde",
        AbstractStochasticModifiedEquation,
        "lambda h: StochasticModifiedEquation.of(step, data, h, order)",
    )
    max_steps = int(round(t_end / grid[0])) * substeps * 2 ** (NUM_LEVELS - 1) + 1
    points, order = [], None
    for i, h in enumerate(grid):
        sde = make_sde(float(h))
        order = sde.order
        step_at_h = step(float(h)) if not isinstance(step, AbstractStepMap) else step
        points.append(
            weak_error(
                step_at_h,
                sde,
                y0,
                float(h),
                t_end,
                test_fn,
                num_samples,
                jr.fold_in(key, i),
                num_sde_samples=num_sde_samples,
                substeps=substeps,
                chunk_size=chunk_size,
                max_steps=max_steps,
            )
        )
        if progress is not None:
            progress(i + 1, grid.size, float(h))
    estimate = WeakOrderEstimate.fit(
        grid,
        [p.error for p in points],
        expected=order,
        stderrs=[p.stderr for p in points],
        solver_errors=[p.solver_error for p in points],
        margin=margin,
        t_end=t_end,
        strict=strict,
        sde_name=f"{type(sde).__name__}(order={order})",
        map_name=_map_name(step_at_h),
        test_name=test_name or getattr(test_fn, "__name__", "phi"),
        num_samples=num_samples,
        sgd_samples_per_second=float(np.median([p.sgd_samples_per_second for p in points])),
        sde_samples_per_second=float(np.median([p.sde_samples_per_second for p in points])),
        signed_errors=np.array([float(p.sgd_expectation[0] - p.sde_expectation[0]) for p in points])
        if points[0].sgd_expectation.size == 1
        else None,
    )
    if not estimate.used.all():
        warnings.warn(
            f"{int((~estimate.used).sum())} of {grid.size} weak errors are not clearly above "
            "their Monte Carlo / solver floors and were left out of the fit (see "
            "`WeakOrderEstimate.excluded`).",
            RoundoffWarning,
            stacklevel=2,
        )
    return estimate
