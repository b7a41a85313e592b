"""Adam from step 0 in both regimes of its bias correction, on a small quadratic.

1. b fixed as h -> 0 (`driftlab.Adam`, bias correction on, counters held burned in by
   the flow): `driftlab.boundary_layer` of the order-1 flow along the iterates from zero
   moments and count 0: the local order per step index and the step it reaches 3 from.
2. The ODE scaling 1 - b_i = c_i h (`driftlab.AdamODE`): the global error over [h, 1] of
   the iterates from step 0 (zero moments) against the order-p flow started at the first
   iterate (tau = h, where the bias-corrected moments are exactly g and g^2), p = 0, 1, 2.

Writes benchmarks/results/adam_from_step_zero.{json,md}.

    python -m benchmarks.adam_from_step_zero
"""

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

import driftlab as dl
from benchmarks._common import command_line, markdown_table, RESULTS_DIR
from driftlab._io import machine_info, write_json_atomic
from driftlab.suites._output import write_text_atomic


B1, B2, EPS = 0.5, 0.7, 1e-2
C1, C2 = 10.0, 1.0


def problem():
    quadratic = dl.problems.quadratic(3, condition=5.0, lambda_max=1.0, seed=0)
    return quadratic, dict(quadratic.data, b=jnp.array([0.3, -0.2, 0.5]))


def fixed_b_layer():
    """On the 4-D quadratic of the optax page (every gradient entry away from zero)."""
    quadratic = dl.problems.quadratic(4, condition=5.0, lambda_max=1.0, seed=0)
    loss, params = quadratic.loss, quadratic.params
    data = dict(quadratic.data, b=jnp.array([0.3, -0.2, 0.5, 0.4]))
    adam = dl.Adam(loss, B1, B2, EPS, bias_correction=True)
    layer = dl.boundary_layer(
        adam,
        lambda h: dl.ModifiedFlow(adam, h, 1),
        adam.init(params),
        [0.004, 0.002, 0.001],
        30,
        data,
    )
    return {
        "hs": layer.hs,
        "orders": layer.orders,
        "defects": layer.defects,
        "order_from": layer.order_from,
    }


def ode_scaling_from_step_zero(loss, params, data, hs=(0.02, 0.01, 0.005, 0.0025), t_end=1.0):
    step = dl.AdamODE(loss, C1, C2, EPS)
    zeros = jnp.zeros_like(params)
    y0 = step.init((params, zeros, zeros))
    out = {}
    for order in range(3):
        errors = []
        for h in hs:
            first = step(y0, h, data)
            last = dl.integrators.advance(step, y0, h, int(round(t_end / h)), data)
            flow = dl.ModifiedFlow(step, h, order)
            end = dl.solve(flow, step.parameters(first), t_end, args=data, t0=h)
            errors.append(float(jnp.linalg.norm(end[0] - last.params)))
        slopes = np.diff(np.log2(errors)) / np.diff(np.log2(hs))
        out[order] = {
            "hs": list(hs),
            "errors": errors,
            "pairwise_slopes": slopes.tolist(),
            "slope": float(np.polyfit(np.log2(hs), np.log2(errors), 1)[0]),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    rerun = command_line("benchmarks.adam_from_step_zero", sys.argv[1:] if argv is None else argv)
    quadratic, data = problem()
    print("fixed b: boundary layer of the order-1 flow", flush=True)
    layer = fixed_b_layer()
    print("ODE scaling: global errors from step 0", flush=True)
    ode = ode_scaling_from_step_zero(quadratic.loss, quadratic.params, data)
    steps = [0, 1, 2, 5, 10, 15, 20, 25, 29]
    text = (
        "# Adam from step 0\n\n"
        f"`{rerun}`\n\n"
        f"## b fixed (b1 = {B1}, b2 = {B2}, eps = {EPS}, corrected; 4-D quadratic, "
        "h = 0.004, 0.002, 0.001): the order-1 flow's local order per step index\n\n"
        + markdown_table(["step", *map(str, steps)], [["order", *layer["orders"][steps]]])
        + f"\n\nexpected 3; holds (to 0.3, to step 29) from step {layer['order_from']}\n\n"
        f"## ODE scaling (c1 = {C1}, c2 = {C2}, eps = {EPS}; 3-D quadratic): global error "
        "over [h, 1], flow started at the first iterate\n\n"
        + markdown_table(
            ["p", "slope", "pairwise slopes", "expected"],
            [
                [p, r["slope"], " ".join(f"{s:.2f}" for s in r["pairwise_slopes"]), p + 1]
                for p, r in ode.items()
            ],
        )
        + "\n"
    )
    write_text_atomic(text, os.path.join(args.output, "adam_from_step_zero.md"))
    write_json_atomic(
        {
            "machine": machine_info(),
            "command": rerun,
            "fixed_b": layer,
            "ode_scaling": {str(k): v for k, v in ode.items()},
        },
        os.path.join(args.output, "adam_from_step_zero.json"),
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
