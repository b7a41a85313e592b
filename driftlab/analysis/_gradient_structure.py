r"""Is a vector field a gradient? The public measurement (its machinery sits below `flows`)."""

from .._custom_types import Args, Y
from .._symmetry import (
    GRADIENT_TOLERANCE as GRADIENT_TOLERANCE,
    GradientStructure as GradientStructure,
    measure_gradient_structure,
)
from ..flows import AbstractSeriesFlow


def is_gradient_field(
    flow,
    y: Y,
    args: Args = None,
    *,
    num_probes: int = 4,
    key=None,
    tolerance: float = GRADIENT_TOLERANCE,
) -> GradientStructure:
    r"""Measure, matrix-free, how far the Jacobian of `flow(0, ., args)` at `y` is from symmetric.

    For each of `num_probes` Gaussian pairs $(u, v)$ it forms $u^\top J v$ (one
    `jax.jvp`) and $v^\top J u = (J^\top v)\cdot u$ (one pullback of a `jax.vjp`
    linearised once); see
    `GradientStructure` for the statistic. A field is a gradient,
    $f = -\nabla \tilde L$, iff $J$ is symmetric everywhere; this checks it at `y`.
    For an `AbstractSeriesFlow` (`ModifiedFlow`, `CorrectedField`) every
    coefficient $f_k$ is measured too, in the same pass (for
    simultaneous or alternating game updates $f_0$ is already rotational; for
    an SGD epoch with fixed batch order $f_1$ carries the antisymmetric
    $\frac{1}{2m}\sum_{i<j}(H_j g_i - H_i g_j)$).

    **Arguments:**

    - `flow`: a field `flow(t, y, args)` returning `y`'s structure.
    - `y`, `args`: where to measure.
    - `num_probes`: probe pairs (statistical error about $1/\sqrt{\text{num\_probes}}$
      relative on the norms; the verdict for an exact gradient is exact up to round-off).
    - `key`: a `jax.random` key (default `jr.key(0)`).
    - `tolerance`: the verdict's threshold on the relative asymmetry.

    **Returns:** a `GradientStructure`.
    """
    return measure_gradient_structure(
        flow,
        y,
        args,
        per_coefficient=isinstance(flow, AbstractSeriesFlow),
        num_probes=num_probes,
        key=key,
        tolerance=tolerance,
    )
