"""The training recipe's modified flows measured: schedules and Adam's bias correction.

On the digits MLP and `fc-digits` (both reduced: 128 samples, hidden width 8, so that
the run stays within a few CPU minutes on a shared machine), for AdamW with warmup and
cosine decay, SGD with heavy-ball momentum and cosine decay, and Adam in the ODE scaling
(bias correction included), the local and global slopes of `ModifiedFlow` of orders 0-2
(expected p + 2 and p + 1), every fitted point above its floor. Local errors are
measured at tau = 1 (away from the kinks), global ones over [0.5, 1.5]; one more global
measurement per case starts at tau = 0 and crosses the warmup's kink (expected
min(p + 1, 2)). Writes benchmarks/results/training_recipe.{json,md}.

    python -m benchmarks.training_recipe
"""

import argparse
import os
import sys
import warnings

import optax

import driftlab as dl
from benchmarks._common import command_line, markdown_table, Progress, RESULTS_DIR
from driftlab._io import machine_info, write_json_atomic
from driftlab._tree import zeros_like
from driftlab.suites._output import write_text_atomic


B1, B2, EPS, EPS_ROOT, DECAY, BETA = 0.5, 0.7, 1e-2, 1e-4, 1e-2, 0.5
WARMUP_COSINE = dl.WarmupCosineSchedule(warmup=0.2237, horizon=2.0, init=0.1)


def problems():
    return {
        "mlp": dl.problems.mlp_digits(hidden=8, num_samples=128, seed=0),
        "fc-digits": dl.problems.fc_digits(width=8, depth=2, num_samples=128, seed=0),
    }


def cases(loss):
    """name -> (map, initial state at tau = 0 builder, step sizes)."""
    adamw = dl.Scheduled(
        dl.OptaxStepMap(
            loss,
            lambda lr: optax.adamw(lr, B1, B2, EPS, eps_root=EPS_ROOT, weight_decay=DECAY),
        ),
        WARMUP_COSINE,
    )
    momentum = dl.Scheduled(dl.HeavyBall(loss, BETA), dl.CosineSchedule(horizon=2.0))
    adam_ode = dl.AdamODE(loss, c1=10.0, c2=1.0, eps=EPS, eps_root=EPS_ROOT)
    return {
        "adamw-warmup-cosine": (adamw, [0.004, 0.002, 0.001]),
        "sgd-momentum-cosine": (momentum, [0.04, 0.02, 0.01]),
        "adam-ode-scaling": (adam_ode, [0.04, 0.02, 0.01]),
    }


def state_at(step, params, tau):
    """The map's state over `params` at time `tau`; AdamODE's moments start at zero."""
    if isinstance(step, dl.AdamODE):
        zeros = zeros_like(params)
        return step.with_time(step.init((params, zeros, zeros)), tau)
    return step.with_time(step.init(params), tau)


def measure(step, params, data, hs, order, kind, tau0, t_end):
    make_flow = lambda h: dl.ModifiedFlow(step, h, order)
    y0 = state_at(step, params, tau0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.KinkWarning)
            warnings.simplefilter("ignore", dl.RoundoffWarning)
            estimate = dl.order_of_accuracy(
                step, make_flow, y0, hs, kind, data, t_end=t_end, check_stability=False
            )
    except dl.MeasurementError as error:
        return {"error": " ".join(str(error).split())[:300]}
    return estimate.to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=RESULTS_DIR)
    parser.add_argument("--stem", default="training_recipe", help="file name of the results")
    parser.add_argument("--problems", nargs="+", default=["mlp", "fc-digits"])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["adamw-warmup-cosine", "sgd-momentum-cosine", "adam-ode-scaling"],
    )
    args = parser.parse_args(argv)
    rerun = command_line("benchmarks.training_recipe", sys.argv[1:] if argv is None else argv)
    rows, results = [], []
    all_problems = {name: problem for name, problem in problems().items() if name in args.problems}
    progress = Progress(len(all_problems) * len(args.cases) * 3)
    for problem_name, problem in all_problems.items():
        for case_name, (step, hs) in cases(problem.loss).items():
            if case_name not in args.cases:
                continue
            for order in range(3):
                local = measure(step, problem.params, problem.data, hs, order, "local", 1.0, None)
                glob = measure(step, problem.params, problem.data, hs, order, "global", 0.5, 1.0)
                kinked = isinstance(step, dl.Scheduled) and min(step.kinks()) < 1.0
                across = (
                    measure(step, problem.params, problem.data, hs, order, "global", 0.0, 1.0)
                    if kinked
                    else {"error": "no kink before tau = 1"}
                )
                record = {
                    "problem": problem_name,
                    "case": case_name,
                    "order": order,
                    "local": local,
                    "global": glob,
                    "global_across_kink": across,
                }
                results.append(record)
                rows.append(
                    [problem_name, case_name, order, _slope(local), order + 2, _slope(glob)]
                    + [order + 1, _slope(across), min(order + 1, 2) if kinked else "-"]
                )
                _write(os.path.join(args.output, args.stem), rerun, rows, results)
                progress(f"{problem_name} {case_name} order {order}")
    print(_table(rows))
    return 0


def _slope(record) -> str:
    if "slope" in record:
        return f"{record['slope']:.2f}"
    return "no fit" if "kink" not in record["error"] else "-"


def _table(rows) -> str:
    return markdown_table(
        ["problem", "case", "p", "local", "expected", "global [0.5, 1.5]", "expected"]
        + ["global across kink [0, 1]", "expected"],
        rows,
    )


def _write(stem, rerun, rows, results) -> None:
    """Rewrite the JSON and Markdown after every row: a long run keeps what it measured."""
    header = (
        "# Training recipe: modified flows of scheduled and ODE-scaled optimisers\n\n"
        f"`{rerun}`\n\n"
        "Reduced sizes (CPU budget): MLP 64-8-10 and fc-digits 64-8-8-10, 128 samples; "
        "3 step sizes per fit. Slopes are fitted on points above their floors only; "
        "'no fit' means fewer than 3 points were usable (see the JSON's errors).\n\n"
    )
    write_text_atomic(header + _table(rows) + "\n", stem + ".md")
    write_json_atomic(
        {"machine": machine_info(), "command": rerun, "results": results}, stem + ".json"
    )


if __name__ == "__main__":
    sys.exit(main())
