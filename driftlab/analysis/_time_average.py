r"""Distance from a map's *time-averaged* iterates: the measurement beyond the edge of stability.

At the edge of stability GD oscillates about a smooth path; `local_error` and
`global_error` compare a flow with the oscillating iterates themselves. Here the
iterates (and the loss along them) are first averaged over a window of steps, and
a flow is compared with that average: the central flow's claim (Cohen et al. 2025).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree

from .._custom_types import Args, RealScalarLike, Y
from .._errors import check_step_size, InputError
from .._tree import split
from ..integrators import AbstractStepMap, iterate, solve
from ..integrators._iterate import check_state


def averaging_weights(width: float, kernel: str = "gaussian") -> np.ndarray:
    r"""The weights of a centred average over steps $-r, \dots, r$.

    `kernel="window"`: uniform over $2r+1$ steps with $r$ = `width` (an integer);
    `"gaussian"`: $\propto e^{-j^2/2\sigma^2}$ with $\sigma$ = `width` steps,
    truncated at $r = \lceil 3\sigma\rceil$. Normalised to sum to one.
    """
    if not width > 0:
        raise InputError(f"`width` must be positive, got {width!r}.")
    if kernel == "window":
        if int(width) != width:
            raise InputError(f"a window's `width` is a whole number of steps, got {width!r}.")
        weights = np.ones(2 * int(width) + 1)
    elif kernel == "gaussian":
        reach = int(np.ceil(3 * width))
        offsets = np.arange(-reach, reach + 1)
        weights = np.exp(-(offsets**2) / (2.0 * width**2))
    else:
        raise InputError(f"`kernel` must be 'gaussian' or 'window', got {kernel!r}.")
    return weights / weights.sum()


def time_average(values, weights: np.ndarray):
    r"""Centred averages $\bar v_n = \sum_{j=-r}^{r} w_j v_{n+j}$ along the leading axis.

    Only where the whole window fits: entry $i$ of the result is step $n = r + i$.
    """
    weights = jnp.asarray(weights)
    reach = (weights.size - 1) // 2
    total = jtu.tree_leaves(values)[0].shape[0]
    if total < weights.size:
        raise InputError(
            f"{total} values cannot be averaged over a window of {weights.size} steps; "
            "take more steps or a smaller `width`."
        )

    def average(leaf):
        windows = jnp.stack([leaf[j : total - 2 * reach + j] for j in range(weights.size)])
        return jnp.tensordot(weights, windows, axes=1)

    return jtu.tree_map(average, values)


class TimeAverageDistance(eqx.Module):
    r"""A flow against a map's time-averaged iterates, step by step.

    **Attributes:**

    - `steps`: the step indices $n$ compared (those where the whole window fits).
    - `distance`: $\|\bar\theta_n - \varphi_{nh}(\theta_0)\|$, the averaged iterates'
      parameters against the flow at the same time.
    - `relative_distance`: `distance` over $\|\bar\theta_n - \theta_0\|$, the distance
      travelled (a flow that stays put scores about 1).
    - `loss_error`: $|\bar L_n - \hat L_n|$, the averaged loss along the iterates
      against the flow's loss prediction (`predicted_loss`, or $L$ on the flow).
    - `averaged_loss`, `flow_loss`: $\bar L_n$ and $\hat L_n$.
    - `width`, `kernel`: the averaging.
    """

    steps: np.ndarray
    distance: np.ndarray
    relative_distance: np.ndarray
    loss_error: np.ndarray
    averaged_loss: np.ndarray
    flow_loss: np.ndarray
    width: float
    kernel: str = eqx.field(static=True)

    def summary(self) -> dict:
        """Means over the compared steps, as plain floats (for tables and JSON)."""
        return {
            "width": float(self.width),
            "kernel": self.kernel,
            "mean_relative_distance": float(np.mean(self.relative_distance)),
            "final_relative_distance": float(self.relative_distance[-1]),
            "mean_loss_error": float(np.mean(self.loss_error)),
            "mean_relative_loss_error": float(
                np.mean(self.loss_error / np.abs(self.averaged_loss))
            ),
        }


def distance_to_time_average(
    step: AbstractStepMap,
    flow,
    y0: Y,
    h: RealScalarLike,
    num_steps: int,
    args: Args = None,
    *,
    loss: Callable | None = None,
    width: float = 10.0,
    kernel: str = "gaussian",
    flow_states: Y | None = None,
    predicted_loss: Callable | None = None,
) -> TimeAverageDistance:
    r"""How far a flow is from the map's time-averaged iterates over `num_steps` steps.

    Runs the map from `y0`, averages its parameters and its loss over a centred
    window (`averaging_weights(width, kernel)`), and compares them, at every step
    $n$ where the window fits, with the flow at time $n\,h$ (driftlab's time: one
    step takes `step.duration(h)`). Works for any flow: by default the flow is
    solved with `driftlab.solve` (Dopri8, tight tolerances); pass `flow_states`
    (the flow's states at steps $0..n$, stacked, e.g. from
    `CentralFlow.integrate`) to use your own integration.

    **Arguments:**

    - `step`, `flow`, `y0`, `h`, `num_steps`, `args`: the map, the flow, the start,
      the step size, the number of steps and the data.
    - `loss`: `loss(params, args)`, the loss to average (default: `step.loss`).
    - `width`, `kernel`: the averaging (`"gaussian"` with $\sigma$ = `width` steps,
      or `"window"` over $2\,$`width`$+1$ steps).
    - `flow_states`: the flow's states at steps $0, \dots, $ `num_steps`, if already solved.
    - `predicted_loss`: `predicted_loss(params, args)`, the flow's prediction of the
      averaged loss (e.g. `CentralFlow.predicted_loss`); default: `loss` on the flow.

    **Returns:** a `TimeAverageDistance`.
    """
    check_state(step, y0)
    h = check_step_size(h)
    if loss is None:
        loss = getattr(step, "loss", None)
        if loss is None:
            raise InputError("`step` has no `loss` field; pass `loss(params, args)`.")
    weights = averaging_weights(width, kernel)
    reach = (weights.size - 1) // 2
    # A model's static leaves (an activation function) are carried apart from its stacked
    # array leaves: transforms and averages see arrays only.
    params, static = split(eqx.filter_vmap(step.parameters)(iterate(step, y0, h, num_steps, args)))
    params0 = step.parameters(y0)
    with_static = lambda arrays: eqx.combine(arrays, static)
    if flow_states is None:
        duration = float(step.duration(h, args))
        ts = duration * jnp.arange(num_steps + 1)
        flow_states = solve(flow, params0, ts[-1], ts=ts, args=args)
    predicted_loss = loss if predicted_loss is None else predicted_loss
    averaged = time_average(params, weights)
    averaged_loss = time_average(jax.vmap(lambda p: loss(with_static(p), args))(params), weights)
    window = slice(reach, num_steps + 1 - reach)
    flow_window = jtu.tree_map(lambda leaf: leaf[window], split(flow_states)[0])
    flow_loss = jax.lax.map(lambda p: predicted_loss(with_static(p), args), flow_window)
    flat = jax.vmap(lambda tree: ravel_pytree(tree)[0])
    averaged_flat, flow_flat = flat(averaged), flat(flow_window)
    distance = jnp.linalg.norm(averaged_flat - flow_flat, axis=1)
    travelled = jnp.linalg.norm(averaged_flat - ravel_pytree(split(params0)[0])[0], axis=1)
    return TimeAverageDistance(
        steps=np.arange(reach, num_steps + 1 - reach),
        distance=np.asarray(distance),
        relative_distance=np.asarray(distance / jnp.where(travelled > 0, travelled, 1.0)),
        loss_error=np.asarray(jnp.abs(averaged_loss - flow_loss)),
        averaged_loss=np.asarray(averaged_loss),
        flow_loss=np.asarray(flow_loss),
        width=float(width),
        kernel=kernel,
    )
