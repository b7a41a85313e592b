"""driftlab's CentralFlow next to the authors' implementation (central_flows_jax), same start.

The authors' example: a swish MLP 8-16-16-1 on 128 random regression points, MSE,
GD with h = 0.1, 1000 steps, k = 5, four Euler substeps per step. `--optimiser rmsprop`
runs `RMSPropCentralFlow` against their RMSProp flow on the same network: h = 1e-3,
beta2 = 0.99, eps = 0, no bias correction (their `RMSProp` defaults), nu started at
the squared gradient, and both flows next to RMSProp's own iterates averaged over a
Gaussian window (sigma = 10 steps), which arbitrates where the two flows differ. Their package
solves the SDCP on the host with cvxpy/CVXOPT, so it runs in its own environment:

    python -m venv /tmp/cf_venv
    /tmp/cf_venv/bin/pip install jax jaxtyping cvxpy cvxopt numpy
    /tmp/cf_venv/bin/pip install --no-deps <checkout of github.com/alex-damian/central_flows_jax>
    python -m benchmarks.central_flow_sidebyside --authors-python /tmp/cf_venv/bin/python

Nothing of theirs is vendored: this script writes the start point to a file, and a
short driver (below) calls their public `Flow.central` from that environment.
Writes `benchmarks/results/central_flow.{json,md}` (`central_flow_rmsprop.*` for RMSProp).
Not part of CI.
"""

import argparse
import os
import subprocess
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import driftlab as dl
from driftlab._io import machine_info, write_json_atomic

from ._common import fmt, markdown_table, RESULTS_DIR, write_text_atomic


SIZES = (8, 16, 16, 1)

DRIVER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from jax.flatten_util import ravel_pytree
    from central_flows_jax import Flow, GradientDescent, RMSProp

    data = np.load(sys.argv[1])
    x, y, p0 = (jnp.asarray(data[name]) for name in ("x", "y", "p0"))
    sizes, lr = tuple(int(n) for n in data["sizes"]), float(data["lr"])
    steps, k = int(data["steps"]), int(data["k"])

    def unravel(p):
        layers, i = [], 0
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers.append((p[i : i + a * b].reshape(a, b), p[i + a * b : i + a * b + b]))
            i += a * b + b
        return layers

    def loss_fn(p):
        h = x
        for n, (w, b) in enumerate(unravel(p)):
            h = h @ w + b
            if n < len(sizes) - 2:
                h = jax.nn.swish(h)
        return jnp.mean((h[:, 0] - y) ** 2)

    if str(data["optimiser"]) == "rmsprop":
        opt = RMSProp(lr=lr, beta2=float(data["beta2"]), eps=0.0)
        opt.initialize_state(p0)  # sets the state layout; nu starts at the squared gradient
        state0 = ravel_pytree({"t": jnp.zeros(()), "nu": jnp.asarray(data["nu0"])})[0]
        nu_of = lambda state: np.asarray(opt.unflatten(state)["nu"])
    else:
        opt = GradientDescent(lr=lr)
        state0 = opt.init(p0)
        nu_of = lambda state: np.zeros(0)
    flow = Flow(loss_fn, opt)
    U0 = jnp.asarray(data["U0"])
    central = (p0, state0, U0)
    ws, losses, eigs, xs, d2, seconds = [np.asarray(p0)], [], [], [], [], []
    nus = [nu_of(state0)]
    for step in range(steps):
        tic = time.perf_counter()
        central, aux = flow.central(*central)
        jax.block_until_ready(central[0])
        seconds.append(time.perf_counter() - tic)
        ws.append(np.asarray(central[0]))
        nus.append(nu_of(central[1]))
        losses.append(float(aux["L"]))
        eigs.append(np.asarray(aux["eigs"]))
        xs.append(np.asarray(aux["X"]))
        d2.append(int(aux["counts"]["d2L"]))
    np.savez(sys.argv[2], ws=np.stack(ws), loss=np.array(losses), eigs=np.stack(eigs),
             X=np.stack(xs), d2L=np.array(d2), seconds=np.array(seconds),
             nu=np.stack(nus))
    """
)


def problem(seed: int = 0):
    """The authors' setting, with our own seeded draw of data and start."""
    keys = jax.random.split(jax.random.key(seed), 2 + len(SIZES))
    x = jax.random.normal(keys[0], (128, SIZES[0]))
    y = jax.random.normal(keys[1], (128,))
    params = [
        (jax.random.normal(key, (a, b)) / jnp.sqrt(a), jnp.zeros(b))  # LeCun normal, zero bias
        for key, a, b in zip(keys[2:], SIZES[:-1], SIZES[1:])
    ]
    flat, unravel = ravel_pytree(params)

    def loss(p, data):
        hidden = data[0]
        for n, (w, b) in enumerate(unravel(p)):
            hidden = hidden @ w + b
            if n < len(SIZES) - 2:
                hidden = jax.nn.swish(hidden)
        return jnp.mean((hidden[:, 0] - data[1]) ** 2)

    return loss, flat, (x, y)


def run_authors(python, x, y, p0, lr, steps, k, workdir, optimiser="gd", beta2=0.0, nu0=None):
    inputs, outputs, driver = (os.path.join(workdir, n) for n in ("in.npz", "out.npz", "d.py"))
    u0 = np.asarray(jax.random.normal(jax.random.key(1), (p0.size, k)))
    nu0 = np.zeros(0) if nu0 is None else nu0
    np.savez(
        inputs,
        x=x,
        y=y,
        p0=p0,
        sizes=np.array(SIZES),
        lr=lr,
        steps=steps,
        k=k,
        U0=u0,
        optimiser=optimiser,
        beta2=beta2,
        nu0=nu0,
    )
    with open(driver, "w") as handle:
        handle.write(DRIVER)
    subprocess.run([python, driver, inputs, outputs], check=True)
    return dict(np.load(outputs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-python", required=True, help="python of the scratch venv")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--lr", type=float, default=None, help="0.1 (GD) or 1e-3 (RMSProp)")
    parser.add_argument("--optimiser", choices=["gd", "rmsprop"], default="gd")
    parser.add_argument("--beta2", type=float, default=0.99, help="RMSProp's decay")
    options = parser.parse_args()
    loss, p0, data = problem()
    rmsprop = options.optimiser == "rmsprop"
    steps, k = options.steps, options.k
    lr = options.lr or (1e-3 if rmsprop else 0.1)
    nu0 = jax.grad(loss)(p0, data) ** 2 if rmsprop else None

    print("authors' implementation ...", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        theirs = run_authors(
            options.authors_python,
            *map(np.asarray, (*data, p0)),
            lr,
            steps,
            k,
            workdir,
            options.optimiser,
            options.beta2,
            None if nu0 is None else np.asarray(nu0),
        )

    print(f"driftlab {'RMSPropCentralFlow' if rmsprop else 'CentralFlow'} ...", flush=True)
    if rmsprop:
        flow = dl.RMSPropCentralFlow(
            loss, lr, rho=options.beta2, eps=0.0, eps_inside_sqrt=False, k=k
        )
        y0 = dl.integrators.RMSPropState(p0, nu0)
    else:
        flow, y0 = dl.CentralFlow(loss, lr, k=k), p0
    tic = time.perf_counter()
    ys, quantities = flow.integrate(y0, steps, data, substeps=4)
    jax.block_until_ready(ys)
    first_call = time.perf_counter() - tic
    tic = time.perf_counter()
    ys, quantities = flow.integrate(y0, steps, data, substeps=4)
    jax.block_until_ready(ys)
    ours_seconds = time.perf_counter() - tic  # compiled: the same call again
    ws = ys.params if rmsprop else ys

    ours_w = np.asarray(ws)
    travelled = np.linalg.norm(theirs["ws"] - np.asarray(p0), axis=1)
    distance = np.linalg.norm(ours_w - theirs["ws"], axis=1)
    relative = distance[1:] / travelled[1:]
    ours_loss = np.asarray(quantities.loss)[:-1]
    loss_gap = np.abs(ours_loss - theirs["loss"]) / np.abs(theirs["loss"])
    ours_sharp = lr * np.asarray(quantities.eigenvalues)[:-1, ::-1]
    their_sharp = np.sort(theirs["eigs"], axis=1)[:, ::-1]
    ours_trace = np.trace(np.asarray(quantities.X), axis1=1, axis2=2)[:-1]
    their_trace = lr * np.trace(theirs["X"], axis1=1, axis2=2)  # their X is ours / lr
    their_step = float(np.median(theirs["seconds"][1:]))  # the first step compiles
    products = np.asarray(quantities.lanczos_products)
    # Per substep: 1 gradient, the Lanczos products, k(k+1)/2 third-derivative products;
    # each saved point carries the Lanczos products of its step's four substeps.
    ours_hvps = float(np.mean(products[:-1])) + 4 * k * (k + 1) / 2
    their_hvps = float(np.mean(theirs["d2L"])) + 4 * k * (k + 1) / 2
    report = {
        "setting": {
            "optimiser": "RMSProp" if rmsprop else "GD",
            "network": "swish MLP 8-16-16-1",
            "points": 128,
            "loss": "MSE",
            "h": lr,
            "steps": steps,
            "k": k,
            "substeps": 4,
            "parameters": int(p0.size),
            **({"beta2": options.beta2, "eps": 0.0, "nu0": "squared gradient"} if rmsprop else {}),
        },
        "relative_trajectory_distance": {
            "max": float(relative.max()),
            "final": float(relative[-1]),
        },
        "relative_loss_difference": {"max": float(loss_gap.max()), "final": float(loss_gap[-1])},
        "sharpness_h_lambda_1": {
            "ours_final": float(ours_sharp[-1, 0]),
            "theirs_final": float(their_sharp[-1, 0]),
            "max_abs_difference": float(np.max(np.abs(ours_sharp[:, 0] - their_sharp[:, 0]))),
        },
        "first_step_with_X_nonzero": {
            "ours": int(np.argmax(ours_trace > 0)),
            "theirs": int(np.argmax(their_trace > 0)),
        },
        "trace_X": {
            "ours_final": float(ours_trace[-1]),
            "theirs_final": float(their_trace[-1]),
            "max_abs_difference": float(np.max(np.abs(ours_trace - their_trace))),
        },
        "seconds_per_gd_step": {
            "ours": ours_seconds / steps,
            "theirs": their_step,
            "speedup": their_step / (ours_seconds / steps),
            "ours_first_call_including_compile": first_call,
        },
        "hessian_vector_products_per_gd_step": {
            "ours": ours_hvps,
            "theirs": their_hvps,
            "note": "third-derivative products counted as one each",
        },
        "machine": machine_info(),
    }
    rows = [
        [
            "relative trajectory distance (max / final)",
            f"{fmt(relative.max())} / {fmt(relative[-1])}",
        ],
        ["relative loss difference (max / final)", f"{fmt(loss_gap.max())} / {fmt(loss_gap[-1])}"],
        [
            "h * sharpness at the end (ours / theirs)",
            f"{fmt(ours_sharp[-1, 0], 6)} / {fmt(their_sharp[-1, 0], 6)}",
        ],
        [
            "trace X at the end (ours / theirs * h)",
            f"{fmt(ours_trace[-1])} / {fmt(their_trace[-1])}",
        ],
        ["seconds per GD step (ours / theirs)", f"{fmt(ours_seconds / steps)} / {fmt(their_step)}"],
        ["speed-up", fmt(their_step / (ours_seconds / steps))],
        [
            "Hessian-vector products per GD step (ours / theirs)",
            f"{fmt(ours_hvps)} / {fmt(their_hvps)}",
        ],
    ]
    name, title, setting = "central_flow", "CentralFlow", f"h = {lr}"
    if rmsprop:
        extra, extra_rows = _against_rmsprop_iterates(
            loss, p0, data, lr, options.beta2, steps, ys, quantities, theirs
        )
        report.update(extra)
        rows += extra_rows
        name, title = "central_flow_rmsprop", "RMSPropCentralFlow"
        setting = f"RMSProp h = {lr}, beta2 = {options.beta2}, eps = 0, nu0 = g0^2"
    os.makedirs(RESULTS_DIR, exist_ok=True)
    write_json_atomic(report, os.path.join(RESULTS_DIR, f"{name}.json"))
    text = (
        f"# {title} next to central_flows_jax\n\n"
        f"Swish MLP 8-16-16-1 ({p0.size} parameters), 128 random points, MSE, {setting}, "
        f"{steps} steps, k = {k}, 4 substeps, same start.\n\n"
        + markdown_table(["quantity", "value"], rows)
        + "\n"
    )
    write_text_atomic(text, os.path.join(RESULTS_DIR, f"{name}.md"))
    print(text)


def _against_rmsprop_iterates(loss, p0, data, lr, beta2, steps, ys, quantities, theirs):
    """nu side by side, and both flows against RMSProp's Gaussian-averaged iterates."""
    ours_nu = np.asarray(ys.nu)
    nu_gap = np.linalg.norm(ours_nu - theirs["nu"], axis=1) / np.linalg.norm(theirs["nu"], axis=1)
    step = dl.RMSProp(loss, rho=beta2, eps=0.0, eps_inside_sqrt=False)
    iterates = dl.iterate(step, dl.integrators.RMSPropState(p0, theirs["nu"][0]), lr, steps, data)
    params = np.asarray(iterates.params)
    weights = dl.analysis.averaging_weights(10.0)
    reach = (weights.size - 1) // 2
    averaged = np.asarray(dl.analysis.time_average(jnp.asarray(params), weights))
    averaged_loss = np.asarray(
        dl.analysis.time_average(jax.vmap(lambda p: loss(p, data))(iterates.params), weights)
    )
    window = slice(reach, steps + 1 - reach)
    travelled = np.linalg.norm(averaged - np.asarray(p0), axis=1)
    their_pred = theirs["loss"] + 0.5 * np.einsum("ni,nii->n", theirs["eigs"], theirs["X"])
    flows = {
        "ours": (np.asarray(ys.params), np.asarray(quantities.predicted_loss)),
        "theirs": (theirs["ws"], np.append(their_pred, np.nan)),
    }
    extra = {"relative_nu_difference": {"max": float(nu_gap.max()), "final": float(nu_gap[-1])}}
    rows = []
    rows.append(
        ["relative nu difference (max / final)", f"{fmt(nu_gap.max())} / {fmt(nu_gap[-1])}"]
    )
    # From the first step where the preconditioned sharpness is within 1% of 2/h.
    edge = int(np.argmax(lr * np.asarray(quantities.eigenvalues)[:, -1] >= 1.98))
    extra["edge_of_stability_from_step"] = edge
    for who, (w, predicted) in flows.items():
        distance = np.linalg.norm(w[window] - averaged, axis=1) / np.maximum(travelled, 1e-300)
        loss_error = np.abs(predicted[window] - averaged_loss) / np.abs(averaged_loss)
        after = np.arange(reach, steps + 1 - reach) >= edge
        extra[f"{who}_vs_rmsprop_time_average"] = {
            "relative_distance_mean": float(np.nanmean(distance)),
            "relative_distance_final": float(distance[-1]),
            "relative_distance_mean_at_the_edge": float(np.nanmean(distance[after])),
            "predicted_loss_relative_error_mean_at_the_edge": float(np.nanmean(loss_error[after])),
        }
        rows.append(
            [
                f"{who}: distance to RMSProp's averaged iterates, mean at the edge / final",
                f"{fmt(np.nanmean(distance[after]))} / {fmt(distance[-1])}",
            ]
        )
        rows.append(
            [
                f"{who}: predicted-loss error against RMSProp's averaged loss, mean at the edge",
                fmt(np.nanmean(loss_error[after])),
            ]
        )
    return extra, rows


if __name__ == "__main__":
    main()
