"""Is the square-root rule safe for my batch size? Batch-size scaling rules, measured on digits.

When the batch grows from B to kB, SGD's linear rule (Goyal et al. 2017) takes the step
k h; Adam's square-root rule (Malladi, Lyu, Panigrahi & Arora 2022) takes sqrt(k) h,
1 - beta_i -> k (1 - beta_i) and eps -> eps / sqrt(k). Each keeps the optimiser's SDE
unchanged, so after the same number of examples (n / k steps: equal SDE time, t = n h for
SGD and t = n h^2 for Adam) the two runs should agree in distribution, up to the SDE's
weak error. `driftlab.analysis.scaling_rule_error` measures
|E L(theta_n) - E L(theta'_{n/k})| (L: the full-data loss) over paired runs that share
their minibatches (common random numbers), with its standard error, for k = 1 .. 16.

The MLP on 256 digits is first trained full batch to a low loss, where the minibatch noise
dominates the gradient (the regime both SDEs describe); each rule is then measured from
there, next to a deliberately wrong rule: the linear rule applied to Adam (step k h) and the
square-root rule applied to SGD (step sqrt(k) h). Claims checked:
1. For Adam the square-root rule beats the linear rule at every k >= 2 (by 3x at k = 2):
   SGD's rule does not carry over to Adam.
2. For SGD the linear rule beats the square-root rule at every k >= 2 (by 3x at k = 2).
3. Both rules are first-order, not exact: the paired runs resolve their errors at k = 2
   (more than 2 standard errors), and the error grows like k - 1 at small k
   (error(4) / error(2) within [2, 4.5]; first order predicts 3).
4. Both correct rules change E L by less than the run-to-run spread of one run at k = 2,
   and both wrong rules by more.
The verdict line per rule: the k up to which its error stays below that spread.
"""

import math
import os
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

import driftlab as dl
from driftlab.analysis import (
    AbstractScalingRule,
    LinearScalingRule,
    scaling_rule_error,
    SquareRootScalingRule,
)
from driftlab.plotting import save_figure

from ._common import finish, parse_args, progress


NAME = "scaling_rules"


class LinearRuleOnAdam(AbstractScalingRule):
    """The wrong rule for Adam: the square-root rule's decays and eps, but the step k h."""

    def apply(self, k, hyperparameters):
        scaled = SquareRootScalingRule().apply(k, hyperparameters)
        return scaled | {"learning_rate": k * hyperparameters["learning_rate"]}


class SquareRootRuleOnSGD(AbstractScalingRule):
    """The wrong rule for SGD: the step sqrt(k) h."""

    def apply(self, k, hyperparameters):
        return hyperparameters | {"learning_rate": math.sqrt(k) * hyperparameters["learning_rate"]}


def pretrain(problem, num_steps):
    """Full-batch Adam (step 0.01) from the problem's initial weights."""
    transform = optax.adam(1e-2)

    @jax.jit
    def step(carry, _):
        params, state = carry
        updates, state = transform.update(jax.grad(problem.loss)(params, problem.data), state)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(
        step, (problem.params, transform.init(problem.params)), None, num_steps
    )
    return params


def main():
    args = parse_args(NAME, __doc__)
    start = time.perf_counter()
    ks = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16]
    num_samples, num_steps = (128, 256) if args.quick else (512, 256)
    batch_size, num_digits = 4, 256
    problem = dl.problems.mlp_digits(hidden=16, num_samples=num_digits)
    params = pretrain(problem, 100)
    full_loss = jax.jit(lambda theta: problem.loss(theta, problem.data))
    lam = float(dl.lambda_max(problem.loss, params, problem.data))
    progress(
        f"MLP (1210 parameters) on {num_digits} digits, pretrained full batch to loss "
        f"{float(full_loss(params)):.4f} (lambda_max {lam:.2f}); batch {batch_size}, "
        f"{num_steps} steps, {num_samples} paired runs per k, k = {ks}"
    )
    adam = {"learning_rate": 1e-3, "b1": 0.99, "b2": 0.999, "eps": 1e-8}
    sgd = {"learning_rate": 0.05}
    cases = {
        ("Adam", "square-root rule"): (optax.adam, adam, SquareRootScalingRule()),
        ("Adam", "linear rule (wrong)"): (optax.adam, adam, LinearRuleOnAdam()),
        ("SGD", "linear rule"): (optax.sgd, sgd, LinearScalingRule()),
        ("SGD", "square-root rule (wrong)"): (optax.sgd, sgd, SquareRootRuleOnSGD()),
    }
    checks_by_case = {}
    for (optimiser, label), (factory, hyperparameters, rule) in cases.items():
        checks_by_case[optimiser, label] = scaling_rule_error(
            factory,
            hyperparameters,
            rule,
            problem.loss,
            params,
            problem.data,
            batch_size=batch_size,
            num_steps=num_steps,
            ks=ks,
            test_fn=full_loss,
            test_name="the full-data loss",
            num_samples=num_samples,
            key=jax.random.key(0),
        )
        progress(f"{optimiser}, {label}: {checks_by_case[optimiser, label].verdict}")
        print(f"\n{optimiser}, {label}\n{checks_by_case[optimiser, label]}")

    right = {"Adam": checks_by_case["Adam", "square-root rule"]}
    right["SGD"] = checks_by_case["SGD", "linear rule"]
    wrong = {"Adam": checks_by_case["Adam", "linear rule (wrong)"]}
    wrong["SGD"] = checks_by_case["SGD", "square-root rule (wrong)"]
    at = {k: i for i, k in enumerate(ks)}
    checks = {}
    for optimiser, rule_name in (("Adam", "square-root"), ("SGD", "linear")):
        good, bad = right[optimiser].errors, wrong[optimiser].errors
        checks[
            f"{optimiser}: the {rule_name} rule beats the wrong rule at every k >= 2, by "
            f"{bad[at[2]] / good[at[2]]:.1f}x at k = 2 (at least 3x)"
        ] = bool(np.all(good[1:] < bad[1:]) and bad[at[2]] > 3 * good[at[2]])
    for optimiser, check in right.items():
        ratio = check.errors[at[4]] / check.errors[at[2]]
        checks[
            f"{optimiser}: the rule is first order, not exact: resolved at k = 2 "
            f"({check.errors[at[2]] / check.stderrs[at[2]]:.1f} standard errors), "
            f"error(4) / error(2) = {ratio:.2f} in [2, 4.5]"
        ] = bool(not check.holds[at[2]] and 2 <= ratio <= 4.5)
    checks[
        "at k = 2 the correct rules move E L by less than one run's spread ("
        + ", ".join(f"{o} {c.spread_ratios[at[2]]:.2f}" for o, c in right.items())
        + "), the wrong rules by more ("
        + ", ".join(f"{o} {c.spread_ratios[at[2]]:.2f}" for o, c in wrong.items())
        + ")"
    ] = bool(
        all(c.spread_ratios[at[2]] < 1 for c in right.values())
        and all(c.spread_ratios[at[2]] > 1 for c in wrong.values())
    )

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, optimiser in zip(axes, ("Adam", "SGD")):
        for i, (label, check) in enumerate(
            (label, c) for (o, label), c in checks_by_case.items() if o == optimiser
        ):
            x, error, band = check.ks[1:], check.errors[1:], 2 * check.stderrs[1:]
            ax.plot(x, error, "o-", color=f"C{i}", label=f"{label}")
            ax.fill_between(
                x,
                np.maximum(error - band, 1e-12),
                error + band,
                color=f"C{i}",
                alpha=0.25,
                label="± 2 standard errors" if i == 0 else None,
            )
        check = right[optimiser]
        ax.axhline(
            check.reference_spread,
            color="grey",
            ls="--",
            label=f"run-to-run spread of L ({check.reference_spread:.2g})",
        )
        first = check.errors[1] / (check.ks[1] - 1)
        ax.plot(
            check.ks[1:],
            first * (check.ks[1:] - 1),
            ":",
            color="k",
            lw=1,
            label="first order: ∝ k − 1",
        )
        hyper = ", ".join(f"{n} {v:g}" for n, v in {"Adam": adam, "SGD": sgd}[optimiser].items())
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="batch-size factor k (batch 4k)",
            title=f"{optimiser} ({hyper})",
        )
        ax.set_xticks(check.ks[1:], [str(k) for k in check.ks[1:]])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"$|\mathbb{E}L(\theta_n) - \mathbb{E}L(\theta'_{n/k})|$")
    figure.suptitle(
        f"MLP on {num_digits} digits, batch {batch_size}, {num_steps} steps "
        f"({num_steps * batch_size // num_digits} epochs), {num_samples} paired runs per k"
    )
    figure.tight_layout()
    save_figure(figure, os.path.join(args.output, "scaling_rules.png"))

    for optimiser, check in right.items():
        print(
            f"{optimiser}: {check.verdict}; below the run-to-run spread up to "
            f"k = {check.within_spread_up_to}"
        )
    numbers = {
        "num_digits": num_digits,
        "batch_size": batch_size,
        "num_steps": num_steps,
        "num_samples": num_samples,
        "ks": ks,
        "pretrained_loss": float(full_loss(params)),
        "lambda_max_at_start": lam,
        "within_spread_up_to": {o: c.within_spread_up_to for o, c in right.items()},
        "checks": {f"{o}, {label}": c.to_dict() for (o, label), c in checks_by_case.items()},
    }
    claim = (
        "each optimiser's own scaling rule (square-root for Adam, linear for SGD) keeps the "
        "expected loss at equal SDE time to first order in k - 1, and the other's does not"
    )
    finish(NAME, args, claim, checks, numbers, start)


if __name__ == "__main__":
    main()
