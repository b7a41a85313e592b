"""Measured orders of accuracy of the literature's flows on the MLP on digits.

Writes `benchmarks/results/literature_flow_orders.json` and the Markdown table in
`docs/flows-accuracy.md`. Run: `python -m benchmarks.literature_flow_orders [--hidden 16]`.

Maps with momentum/adaptive state start on the slow manifold (`flow.slow_state`),
which depends on `h`, so errors are measured point by point with
`driftlab.local_error` / `driftlab.global_error` and fitted with the same
least-squares slope as `driftlab.order_of_accuracy`.
"""

import argparse
import os
import time

import jax.tree_util as jtu
import numpy as np

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic
from driftlab.analysis._order import fit_slope

from ._common import RESULTS_DIR, write_text_atomic


def cases(hidden):
    problem = dl.problems.mlp_digits(hidden=hidden)
    loss, params, data = problem.loss, problem.params, problem.data
    gd = dl.GradientDescent(loss)
    fixed = lambda h: params
    hs_gd = [0.2, 0.1, 0.05, 0.025]
    hs_memory = [0.032, 0.016, 0.008, 0.004]
    rows = [
        ("igr", "GD", gd, lambda h: dl.IGRFlow(loss, h), fixed, hs_gd, data),
        (
            "principal-lanczos (k=10)",
            "GD",
            gd,
            lambda h: dl.PrincipalFlow(loss, h, method="lanczos", k=10, num_iterations=20),
            fixed,
            hs_gd,
            data,
        ),
        (
            "exact-batch-sgd (m=4)",
            "SGDEpoch, fixed order",
            dl.SGDEpoch(loss),
            lambda h: dl.ExactBatchSGDFlow(loss, h),
            fixed,
            [0.1, 0.05, 0.025, 0.0125],
            problem.batches(4),
        ),
        (
            "sgd (m=3)",
            "SGDEpoch, mean over the 6 orders",
            dl.OrderAveragedSGDEpoch(loss),
            lambda h: dl.SGDFlow(loss, h),
            fixed,
            [0.1, 0.05, 0.025, 0.0125],
            problem.batches(3),
        ),
    ]
    memory = [
        (
            "heavy-ball (beta=0.5)",
            dl.HeavyBall(loss, 0.5),
            lambda h: dl.HeavyBallFlow(loss, h, 0.5),
        ),
        (
            "rmsprop (rho=0.7, eps=0.1 inside)",
            dl.RMSProp(loss, rho=0.7, eps=0.1),
            lambda h: dl.RMSPropFlow(loss, h, 0.7, 0.1),
        ),
        (
            "adam (b1=0.5, b2=0.7, eps=0.1 inside, no bias correction)",
            dl.Adam(loss, 0.5, 0.7, 0.1, eps_inside_sqrt=True, bias_correction=False),
            lambda h: dl.AdamFlow(loss, h, 0.5, 0.7, 0.1, True),
        ),
    ]
    for name, step, make_flow in memory:
        start = lambda h, make_flow=make_flow: make_flow(h).slow_state(params, data)
        rows.append((name, type(step).__name__, step, make_flow, start, hs_memory, data))
    loss_phi, loss_theta = dl.problems.tanh_game_losses()
    game = dl.problems.tanh_game()
    y0, game_data = game.params, game.data
    for name, make_map, make_flow in [
        ("simultaneous-game (alpha=1, lambda=0.4)", dl.SimultaneousGD, dl.SimultaneousGameFlow),
        ("alternating-game (alpha=1, lambda=0.4)", dl.AlternatingGD, dl.AlternatingGameFlow),
    ]:
        rows.append(
            (
                name + " [tanh game, not the MLP]",
                make_map.__name__,
                make_map(loss_phi, loss_theta, 1.0, 0.4),
                lambda h, make_flow=make_flow: make_flow(loss_phi, loss_theta, h, 1.0, 0.4),
                lambda h: y0,
                [0.2, 0.1, 0.05, 0.025],
                game_data,
            )
        )
    return problem, rows


def measure(step, make_flow, make_y0, hs, args, kind, t_end):
    errors, floors = [], []
    for h in hs:
        y0 = make_y0(h)
        if kind == "local":
            m = dl.local_error(step, make_flow(h), y0, h, args)
        else:
            m = dl.global_error(step, make_flow(h), y0, h, t_end, args)
        errors.append(m.error)
        floors.append(m.floor)
    hs, errors, floors = np.array(hs), np.array(errors), np.array(floors)
    used = errors >= 10 * floors
    slope, stderr, _ = fit_slope(hs, errors, used)
    return {
        "hs": hs.tolist(),
        "errors": errors.tolist(),
        "used": used.tolist(),
        "slope": slope,
        "slope_stderr": stderr,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--t-end", type=float, default=0.4)
    parser.add_argument("--only", nargs="*", help="substrings of flow names to run")
    options = parser.parse_args()
    problem, rows = cases(options.hidden)
    size = sum(leaf.size for leaf in jtu.tree_leaves(problem.params))
    results = []
    for name, map_name, step, make_flow, make_y0, hs, args in rows:
        if options.only and not any(s in name for s in options.only):
            continue
        start = time.perf_counter()
        row = {"flow": name, "map": map_name, "order": 1}
        for kind in ("local", "global"):
            row[kind] = measure(step, make_flow, make_y0, hs, args, kind, options.t_end)
        row["seconds"] = time.perf_counter() - start
        results.append(row)
        print(
            f"{name}: local {row['local']['slope']:.2f}, global {row['global']['slope']:.2f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
    write_json_atomic(
        {
            "hidden": options.hidden,
            "num_params": size,
            "t_end": options.t_end,
            "rows": results,
            "machine": machine_info(),
        },
        os.path.join(RESULTS_DIR, "literature_flow_orders.json"),
    )
    lines = [
        "| flow | map | expected local / global | measured local | measured global | h range |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        local, glob = row["local"], row["global"]
        lines.append(
            f"| {row['flow']} | {row['map']} | 3 / 2 | {local['slope']:.2f} ± "
            f"{local['slope_stderr']:.2f} | {glob['slope']:.2f} ± {glob['slope_stderr']:.2f} | "
            f"{min(local['hs']):g} – {max(local['hs']):g} |"
        )
    table = "\n".join(lines)
    print(table)
    write_text_atomic(table + "\n", os.path.join(RESULTS_DIR, "literature_flow_orders.md"))


if __name__ == "__main__":
    main()
