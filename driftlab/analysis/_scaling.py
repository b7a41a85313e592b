r"""Scaling rules for the batch size, measured: does $(kB, h', \dots)$ follow $(B, h, \dots)$?

A scaling rule says how to change an optimiser's hyperparameters when the batch
grows from $B$ to $kB$ so that training follows the same trajectory *in
distribution*. Both rules below come from matching stochastic differential
equations: the run at $(B, h)$ and the run at the rule's hyperparameters
approximate the same SDE, so at equal SDE time their expectations agree up to
the SDE's weak error. `scaling_rule_error` measures the difference
$|\mathbb E\varphi(\theta_n) - \mathbb E\varphi(\theta'_{n/k})|$ with its Monte
Carlo standard error, and says at which $k$ it is resolved (the rule breaks).
"""

import abc
import json
import math
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax

from .._custom_types import Args, Y
from .._errors import check_float64_tree, InputError, MeasurementError
from ..integrators._random import (
    check_loss,
    check_sampling,
    num_units,
    RandomBatchSGD,
)
from ._weak import _stats, _timed_in_chunks


#: A rule holds at `k` when its error is within this many standard errors.
NUM_STDERRS = 2.0

_RULE_REFERENCES = r"""
    ??? cite "References"
        ```bibtex
        @article{goyal2017accurate,
          title={Accurate, Large Minibatch {SGD}: Training {ImageNet} in 1 Hour},
          author={Goyal, Priya and Doll{\'a}r, Piotr and Girshick, Ross and Noordhuis,
                  Pieter and Wesolowski, Lukasz and Kyrola, Aapo and Tulloch, Andrew
                  and Jia, Yangqing and He, Kaiming},
          journal={arXiv:1706.02677}, year={2017}
        }
        @inproceedings{malladi2022sdes,
          title={On the {SDE}s and Scaling Rules for Adaptive Gradient Algorithms},
          author={Malladi, Sadhika and Lyu, Kaifeng and Panigrahi, Abhishek and
                  Arora, Sanjeev},
          booktitle={Advances in Neural Information Processing Systems},
          volume={35}, year={2022}
        }
        ```
"""


def check_factor(k) -> int:
    """`k` as a Python int after checking it is a positive integer (a batch-size factor)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(
            f"a batch-size factor `k` must be a positive integer (the batch grows from B to "
            f"k B), got {k!r}."
        )
    return int(k)


def _hyperparameter(hyperparameters: Mapping[str, float], name: str, rule: str) -> float:
    if name not in hyperparameters:
        raise InputError(
            f"{rule} scales the hyperparameter {name!r}, which `hyperparameters` lacks (it has "
            f"{sorted(hyperparameters)}); pass it, or name the right key in the rule."
        )
    value = hyperparameters[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise InputError(
            f"{rule} scales the hyperparameter {name!r}, which must be a number, got {value!r} "
            "(a schedule cannot be scaled by a number)."
        )
    return float(value)


class AbstractScalingRule(eqx.Module):
    r"""A batch-size scaling rule: the hyperparameters for batch $kB$ given those for $B$.

    The run at the rule's hyperparameters takes $n/k$ steps where the original
    takes $n$: the same number of examples, which is equal continuous time in the
    SDE that motivates both provided rules (see `scaling_rule_error`).

    Subclass it with `apply(k, hyperparameters) -> dict` to test a rule of your
    own; `name` labels it in tables.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def apply(self, k: int, hyperparameters: Mapping[str, float]) -> dict[str, float]:
        """The hyperparameters for batch size `k` times the original (a new dict)."""


class LinearScalingRule(AbstractScalingRule):
    r"""SGD's linear rule: $B \to kB$, $h \to kh$ (Goyal et al. 2017).

    SGD in time $t = nh$ is close to
    $\mathrm d\Theta = -\nabla L\,\mathrm dt + \sqrt{h/B}\,\Sigma^{1/2}\mathrm dW$
    (Li, Tai & E), which depends on $h$ and $B$ only through $h/B$: $(kB, kh)$
    runs the same SDE, and $n/k$ steps of $kh$ reach the same time $T = nh$.

    **Arguments:** `learning_rate`: the key of the step size in the optimiser
    factory's hyperparameters (optax's `"learning_rate"`).
    """

    learning_rate: str = eqx.field(static=True, default="learning_rate")

    def apply(self, k: int, hyperparameters: Mapping[str, float]) -> dict[str, float]:
        k = check_factor(k)
        rate = _hyperparameter(hyperparameters, self.learning_rate, self.name)
        return {**hyperparameters, self.learning_rate: k * rate}


LinearScalingRule.__doc__ += _RULE_REFERENCES


class SquareRootScalingRule(AbstractScalingRule):
    r"""Adam's and RMSProp's square-root rule (Malladi, Lyu, Panigrahi & Arora 2022).

    $B \to kB$, $h \to \sqrt k\,h$, $1 - \beta_i \to k(1 - \beta_i)$,
    $\epsilon \to \epsilon/\sqrt k$. Malladi et al.'s SDE for RMSProp and Adam
    holds when $1 - \beta_i = c_i h^2$, $\epsilon = \epsilon_0 h$ and the gradient
    noise is $\sigma = \sigma_0/h$ (with $\sigma^2 \propto 1/B$), and runs in the
    time $t = nh^2$ (one step takes $h^2$: the moving averages relax over
    $1/(1 - \beta_i) = 1/(c_ih^2)$ steps, and a step moves $\theta$ by about
    $h\,g/\sigma = h^2 g/\sigma_0$, both $O(1)$ per unit of $nh^2$). The rule keeps
    $c_i$, $\epsilon_0$ and $\sigma_0$ fixed, so both runs approximate the same SDE; equal SDE time
    $n h^2 = n'(\sqrt k h)^2$ means $n' = n/k$ steps (the same number of
    examples), *not* $n' h' = nh$. A decay with $k(1-\beta_i) > 1$ has no
    valid $\beta_i'$: the rule cannot be applied at that `k`.

    **Arguments:** the keys of the optimiser factory's hyperparameters:
    `learning_rate` (optax: `"learning_rate"`), `decays` (the $\beta_i$: optax
    `adam`'s `("b1", "b2")`, `rmsprop`'s `("decay",)`), `eps` (optax:
    `("eps",)`; added outside the square root, as in the paper).
    """

    learning_rate: str = eqx.field(static=True, default="learning_rate")
    decays: tuple[str, ...] = eqx.field(static=True, default=("b1", "b2"))
    eps: tuple[str, ...] = eqx.field(static=True, default=("eps",))

    def apply(self, k: int, hyperparameters: Mapping[str, float]) -> dict[str, float]:
        k = check_factor(k)
        root = math.sqrt(k)
        scaled = dict(hyperparameters)
        scaled[self.learning_rate] = root * _hyperparameter(
            hyperparameters, self.learning_rate, self.name
        )
        for name in self.decays:
            beta = _hyperparameter(hyperparameters, name, self.name)
            scaled[name] = 1 - k * (1 - beta)
            if not 0 <= scaled[name] < 1:
                raise InputError(
                    f"{self.name} at k={k} turns `{name}` = {beta:g} into 1 - k (1 - {name}) = "
                    f"{scaled[name]:g}, not a decay in [0, 1); it needs k (1 - {name}) <= 1: "
                    f"use {name} closer to 1 or a smaller k."
                )
        for name in self.eps:
            scaled[name] = _hyperparameter(hyperparameters, name, self.name) / root
        return scaled


SquareRootScalingRule.__doc__ += _RULE_REFERENCES


class ScalingRuleCheck(eqx.Module):
    r"""A measured scaling rule: the weak difference of the two runs, per batch-size factor $k$.

    **Attributes:**

    - `rule_name`, `optimizer_name`, `test_name`; `batch_size` ($B$) and
      `num_steps` ($n$) of the original run; `num_samples` (paths per
      configuration); `common_random_numbers`: whether each path of the run at
      $kB$ used the union of the $k$ minibatches the original path drew over the
      same stretch (then the differences are per path, see `scaling_rule_error`).
    - `ks`, `batch_sizes` ($kB$), `steps` ($n/k$), `hyperparameters` (one dict per $k$).
    - `differences`: $\mathbb E\varphi(\theta_n) - \mathbb E\varphi(\theta'_{n/k})$, flattened
      (a row per $k$); `errors`: their Euclidean norms; `stderrs`: the Monte Carlo
      standard errors of those differences.
    - `holds`: `errors <= num_stderrs * stderrs` (finite); `diverged`: the run at
      that $k$ became non-finite (the rule broke by divergence).
    - `reference_expectation`: $\mathbb E\varphi(\theta_n)$; `reference_change`:
      $\|\mathbb E\varphi(\theta_n) - \varphi(\theta_0)\|$, what the original run
      changed, and `reference_spread`: the run-to-run standard deviation of
      $\varphi(\theta_n)$ (norm over its entries), what tells one run from another:
      two scales to read the errors against (`relative_errors`, `spread_ratios`).
    """

    rule_name: str = eqx.field(static=True)
    optimizer_name: str = eqx.field(static=True)
    test_name: str = eqx.field(static=True)
    batch_size: int
    num_steps: int
    num_samples: int
    common_random_numbers: bool
    num_stderrs: float
    ks: np.ndarray
    batch_sizes: np.ndarray
    steps: np.ndarray
    hyperparameters: tuple[dict, ...]
    differences: np.ndarray
    errors: np.ndarray
    stderrs: np.ndarray
    holds: np.ndarray
    diverged: np.ndarray
    reference_expectation: np.ndarray
    reference_change: float
    reference_spread: float

    @property
    def breaks_at(self) -> int | None:
        """The smallest `k` at which the rule does not hold (`None`: it holds at every `k`)."""
        failing = self.ks[~self.holds]
        return int(failing.min()) if failing.size else None

    @property
    def safe_up_to(self) -> int | None:
        """The largest `k` below which (and at which) the rule holds at every measured `k`.

        `None` when it fails at the smallest measured `k`.
        """
        below = self.ks if self.breaks_at is None else self.ks[self.ks < self.breaks_at]
        return int(below.max()) if below.size else None

    @property
    def relative_errors(self) -> np.ndarray:
        """`errors / reference_change`: the rule's error against what training changed."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.errors / self.reference_change

    @property
    def spread_ratios(self) -> np.ndarray:
        """`errors / reference_spread`: the rule's error against the spread of single runs."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.errors / self.reference_spread

    @property
    def within_spread_up_to(self) -> int | None:
        r"""The largest `k` up to which every error is below `reference_spread`.

        A looser, practical reading than `safe_up_to`: up to there the rule changes
        $\mathbb E\varphi$ by less than reseeding one run changes $\varphi$.
        """
        below = self.ks[np.cumprod(self.spread_ratios < 1).astype(bool)]
        return int(below.max()) if below.size else None

    @property
    def verdict(self) -> str:
        """One line: where the rule holds and where it breaks."""
        resolution = f"within {self.num_stderrs:g} standard errors, {self.num_samples} samples"
        if self.breaks_at is None:
            return (
                f"{self.rule_name} holds at every measured k up to {self.ks.max()} ({resolution})"
            )
        index = int(np.flatnonzero(self.ks == self.breaks_at)[0])
        how = (
            "the run diverges"
            if self.diverged[index]
            else f"error {self.errors[index]:.3g} = {self.errors[index] / self.stderrs[index]:.1f} "
            "standard errors"
        )
        safe = "no measured k" if self.safe_up_to is None else f"k = {self.safe_up_to}"
        return (
            f"{self.rule_name} is safe up to {safe} and breaks at k = {self.breaks_at} ({how}; "
            f"{resolution})"
        )

    def to_dict(self) -> dict:
        return {
            "kind": "scaling_rule",
            "rule": self.rule_name,
            "optimizer": self.optimizer_name,
            "test_fn": self.test_name,
            "batch_size": self.batch_size,
            "num_steps": self.num_steps,
            "num_samples": self.num_samples,
            "common_random_numbers": self.common_random_numbers,
            "num_stderrs": self.num_stderrs,
            "ks": [int(k) for k in self.ks],
            "batch_sizes": [int(b) for b in self.batch_sizes],
            "steps": [int(n) for n in self.steps],
            "hyperparameters": [
                {
                    n: v if isinstance(v, (int, float, str, type(None))) else repr(v)
                    for n, v in h.items()
                }
                for h in self.hyperparameters
            ],
            "differences": self.differences.tolist(),
            "errors": [float(e) for e in self.errors],
            "stderrs": [float(s) for s in self.stderrs],
            "relative_errors": [float(e) for e in self.relative_errors],
            "holds": [bool(h) for h in self.holds],
            "diverged": [bool(d) for d in self.diverged],
            "reference_expectation": self.reference_expectation.tolist(),
            "reference_change": self.reference_change,
            "reference_spread": self.reference_spread,
            "spread_ratios": [float(r) for r in self.spread_ratios],
            "breaks_at": self.breaks_at,
            "safe_up_to": self.safe_up_to,
            "within_spread_up_to": self.within_spread_up_to,
            "verdict": self.verdict,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"{self.rule_name} for {self.optimizer_name} on {self.test_name}: "
            f"batch {self.batch_size}, {self.num_steps} steps, {self.num_samples} samples"
            + (", common random numbers" if self.common_random_numbers else ", independent runs"),
            f"{'k':>4} {'batch':>6} {'steps':>6} {'error':>11} {'stderr':>11} {'relative':>9} "
            f"{'/spread':>9}  "
            "holds",
        ]
        for k, b, n, e, s, r, q, ok, bad in zip(
            self.ks,
            self.batch_sizes,
            self.steps,
            self.errors,
            self.stderrs,
            self.relative_errors,
            self.spread_ratios,
            self.holds,
            self.diverged,
        ):
            state = "diverged" if bad else "yes" if ok else "no"
            lines.append(f"{k:4d} {b:6d} {n:6d} {e:11.4e} {s:11.4e} {r:9.2e} {q:9.2e}  {state}")
        lines.append(self.verdict)
        return "\n".join(lines)


def _split_hyperparameters(values: Mapping) -> tuple[dict, tuple]:
    """Numbers (traced, so one compilation serves every `k`) and the other, static options."""
    dynamic, static = {}, []
    for name, value in values.items():
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            dynamic[name] = jnp.asarray(value, dtype=jnp.float64)
        else:
            static.append((name, value))
    return dynamic, tuple(static)


@eqx.filter_jit
def _final_values(optimizer, dynamic, static, sampler, params, data, num_steps, k, keys, test_fn):
    """$\\varphi(\\theta)$ after `num_steps` steps of `optimizer` on minibatches of $kB$.

    `sampler` draws $B$ units. The $kB$-batch of step $j$ on path `key` is $k$ chunks
    of $B$: with replacement, the $B$-batches `sampler` draws with keys $jk + r$,
    $r < k$ (so $k = 1$ is the original run, and the same keys couple the runs); without,
    the first $kB$ units of a random permutation drawn with key $j$. The step's gradient
    is the mean of the chunks' gradients, which is the $kB$-batch's (equal chunks), with
    static shapes: `k` and `num_steps` are traced, so one compilation serves every `k`.
    """
    transform = optimizer(**dynamic, **dict(static))
    num = num_units(data)
    batch = sampler.batch_size
    permutation = RandomBatchSGD(sampler.loss, num, replacement=False, examples=sampler.examples)

    def one(key):
        def step(j, carry):
            theta, state = carry
            if sampler.replacement:
                chunk = lambda r: sampler.draw(jr.fold_in(key, j * k + r), num)
            else:
                order = permutation.draw(jr.fold_in(key, j), num)
                chunk = lambda r: jax.lax.dynamic_slice_in_dim(order, r * batch, batch)
            total = jax.lax.fori_loop(
                0,
                k,
                lambda r, acc: jtu.tree_map(jnp.add, acc, sampler.gradient(theta, data, chunk(r))),
                jtu.tree_map(jnp.zeros_like, theta),
            )
            grad = jtu.tree_map(lambda g: g / k, total)
            updates, state = transform.update(grad, state, theta)
            return optax.apply_updates(theta, updates), state

        theta, _ = jax.lax.fori_loop(0, num_steps, step, (params, transform.init(params)))
        return jnp.asarray(test_fn(theta), dtype=jnp.float64)

    return jax.vmap(one)(keys)


def scaling_rule_error(
    optimizer: Callable[..., optax.GradientTransformation],
    hyperparameters: Mapping[str, float],
    rule: AbstractScalingRule,
    loss: Callable[[Y, Args], jax.Array],
    params: Y,
    data: Args,
    *,
    batch_size: int,
    num_steps: int,
    ks: Sequence[int],
    test_fn: Callable[[Y], jax.Array],
    num_samples: int,
    key,
    examples: bool = True,
    replacement: bool = True,
    common_random_numbers: bool | None = None,
    num_stderrs: float = NUM_STDERRS,
    test_name: str | None = None,
    chunk_size: int = 512,
    progress: Callable[[int, int, int], None] | None = None,
) -> ScalingRuleCheck:
    r"""Does a batch-size scaling rule hold? The weak difference of the two runs, per $k$.

    Runs `optimizer(**hyperparameters)` (any optax optimiser factory) for $n$ =
    `num_steps` steps on random minibatches of $B$ = `batch_size` units of
    `data`, and, for each $k$ in `ks`, `optimizer(**rule.apply(k, hyperparameters))`
    for $n/k$ steps on minibatches of $kB$, and measures

    $$\Delta_k = \mathbb E\varphi(\theta_n) - \mathbb E\varphi(\theta'_{n/k})$$

    by Monte Carlo over `num_samples` paths per configuration, with its standard
    error. $n/k$ steps is *equal continuous time* for both provided rules: SGD's
    SDE runs in $t = nh$ and the linear rule's $n/k$ steps of $kh$ reach $nh$;
    Adam's and RMSProp's SDE (Malladi et al. 2022) runs in $t = nh^2$ and the
    square-root rule's $n/k$ steps of $\sqrt k h$ reach $nh^2$. Either way the
    two runs see the same number of examples. The rule *holds* at $k$ when
    $\|\Delta_k\| \le$ `num_stderrs` standard errors (a difference the samples do
    not resolve) and *breaks* at the first $k$ where it does not (or the run
    diverges). More samples resolve smaller differences: read `errors` against
    `reference_change`, the size of what training did.

    Minibatches are drawn by `driftlab.integrators.RandomBatchSGD`'s sampling
    models (units along `data`'s leading axis; `examples`, `replacement`). With
    replacement the runs use *common random numbers*: path $s$ at $kB$ uses, at
    its step $j$, the union of the $k$ minibatches path $s$ at $B$ drew at steps
    $jk, \dots, jk + k - 1$. That union is a uniform draw of $kB$ units with
    replacement, so each run keeps its own law, and both runs see the same noise,
    so $\Delta_k$ is estimated from per-path differences with a far smaller
    standard error than independent runs give. Without replacement the union is
    not a draw without replacement, so the runs are independent.

    **Arguments:**

    - `optimizer`: a factory `optimizer(**hyperparameters) -> optax.GradientTransformation`
      (`optax.sgd`, `optax.adam`, ...); `hyperparameters`: the original ones, by
      keyword; `rule`: an `AbstractScalingRule` (`LinearScalingRule`,
      `SquareRootScalingRule`, or your own).
    - `loss(params, batch)`, `params` (float64), `data` (units on the leading axis).
    - `batch_size` ($B$), `num_steps` ($n$, a multiple of every $k$), `ks`
      (positive integers), `test_fn` ($\varphi$: params $\mapsto$ array, any shape;
      the error is the norm of the difference).
    - `num_samples` (paths per configuration, at least 2), `key` (`jax.random.key`).
    - `examples`, `replacement`: the sampling model; `common_random_numbers`:
      defaults to `replacement` (it needs it).
    - `num_stderrs`: the tolerance in standard errors (2); `chunk_size`: paths per
      vmapped batch; `progress(i, total, k)`: called after each configuration.

    **Returns:** a `ScalingRuleCheck`.

    **Raises:** `InputError` for bad arguments (a `k` that is not a positive
    integer, $kB$ larger than the data without replacement, a $\varphi$ that is
    not finite at `params`, hyperparameters the rule cannot scale);
    `MeasurementError` when the original run diverges.
    """
    if not callable(optimizer):
        raise InputError(
            "`optimizer` must be an optax factory called as `optimizer(**hyperparameters)`, "
            f"e.g. `optax.adam`; got {type(optimizer).__name__}."
        )
    if not isinstance(rule, AbstractScalingRule):
        raise InputError(
            "`rule` must be a driftlab.analysis.AbstractScalingRule (LinearScalingRule, "
            f"SquareRootScalingRule or a subclass), got {type(rule).__name__}."
        )
    check_loss(loss)
    check_float64_tree(params, "params")
    if not isinstance(hyperparameters, Mapping):
        raise InputError(
            "`hyperparameters` must be a mapping of the optimiser factory's keyword arguments, "
            f"e.g. {{'learning_rate': 0.01}}; got {type(hyperparameters).__name__}."
        )
    ks = list(np.atleast_1d(np.asarray(ks, dtype=object)))
    if not ks:
        raise InputError("`ks` must hold at least one positive integer (a batch-size factor).")
    ks = sorted({check_factor(k) for k in ks})
    if not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"`num_steps` must be a positive integer, got {num_steps!r}.")
    for k in ks:
        if num_steps % k:
            raise InputError(
                f"`num_steps` {num_steps} is not a multiple of k={k}: the run at batch k B takes "
                "num_steps / k steps (equal continuous time); pick `num_steps` divisible by "
                "every k."
            )
    if not isinstance(num_samples, int) or num_samples < 2:
        raise InputError(f"`num_samples` must be an integer >= 2, got {num_samples!r}.")
    num = num_units(data)
    check_sampling(num, batch_size, replacement)
    if not replacement:
        for k in ks:
            try:
                check_sampling(num, k * batch_size, replacement)
            except InputError:
                raise InputError(
                    f"the rule's batch k B = {k} x {batch_size} = {k * batch_size} exceeds the "
                    f"{num} units of `data`; without replacement a minibatch holds distinct "
                    "units: use smaller `ks` or `batch_size`, or `replacement=True`."
                ) from None
    common = replacement if common_random_numbers is None else bool(common_random_numbers)
    if common and not replacement:
        raise InputError(
            "`common_random_numbers=True` needs `replacement=True`: the union of k minibatches "
            "drawn without replacement is not a minibatch drawn without replacement."
        )
    initial = np.asarray(test_fn(params), dtype=np.float64)
    if not np.all(np.isfinite(initial)):
        raise InputError(
            f"`test_fn` is not finite at `params` (it returned {initial.ravel()[:4].tolist()}); "
            "pass a test function with finite values there."
        )
    schedule = [hyperparameters] + [rule.apply(k, hyperparameters) for k in ks]
    for values in schedule:
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"hyperparameter {name!r} is {value}; pass finite values.")

    sampler = RandomBatchSGD(loss, batch_size, replacement, examples)
    reference_key, rule_key = jr.split(key)
    reference_keys = jr.split(reference_key, num_samples)

    def run(k, values, keys):
        dynamic, static = _split_hyperparameters(values)
        steps_, k_ = jnp.asarray(num_steps // k), jnp.asarray(k)
        fn = lambda chunk: _final_values(
            optimizer, dynamic, static, sampler, params, data, steps_, k_, chunk, test_fn
        )
        return _timed_in_chunks(fn, keys, chunk_size)[0]

    reference = run(1, dict(hyperparameters), reference_keys)
    if progress is not None:
        progress(1, len(ks) + 1, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        reference_mean, reference_se = _stats(reference)
    if not (np.all(np.isfinite(reference_mean)) and math.isfinite(reference_se)):
        raise MeasurementError(
            f"the original run (batch {batch_size}, {num_steps} steps) diverged; use a smaller "
            "learning rate."
        )
    differences, stderrs, diverged = [], [], []
    for i, k in enumerate(ks):
        keys = reference_keys if common else jr.split(jr.fold_in(rule_key, k), num_samples)
        values = run(k, schedule[i + 1], keys)
        with np.errstate(over="ignore", invalid="ignore"):
            if common:
                difference, stderr = _stats(reference - values)
            else:
                mean, se = _stats(values)
                difference, stderr = reference_mean - mean, math.hypot(reference_se, se)
        # A run that overflowed (or whose spread overflows) diverged: the rule broke there.
        diverged.append(not (np.all(np.isfinite(difference)) and math.isfinite(stderr)))
        differences.append(np.full(difference.shape, np.inf) if diverged[-1] else difference)
        stderrs.append(math.nan if diverged[-1] else stderr)
        if progress is not None:
            progress(i + 2, len(ks) + 1, k)
    differences = np.array(differences)
    errors = np.linalg.norm(differences, axis=1)
    stderrs = np.array(stderrs)
    diverged = np.array(diverged)
    with np.errstate(invalid="ignore"):
        holds = ~diverged & (errors <= num_stderrs * stderrs)
    ks = np.array(ks)
    return ScalingRuleCheck(
        rule_name=rule.name,
        optimizer_name=getattr(optimizer, "__name__", type(optimizer).__name__),
        test_name=test_name or getattr(test_fn, "__name__", "phi"),
        batch_size=batch_size,
        num_steps=num_steps,
        num_samples=num_samples,
        common_random_numbers=common,
        num_stderrs=float(num_stderrs),
        ks=ks,
        batch_sizes=ks * batch_size,
        steps=num_steps // ks,
        hyperparameters=tuple(schedule[1:]),
        differences=differences,
        errors=errors,
        stderrs=stderrs,
        holds=holds,
        diverged=diverged,
        reference_expectation=reference_mean,
        reference_change=float(np.linalg.norm(reference_mean - initial.ravel())),
        reference_spread=reference_se * math.sqrt(num_samples),
    )
