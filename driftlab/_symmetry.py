r"""Is a vector field a gradient? Matrix-free symmetry of its Jacobian with random probes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._custom_types import Args, Y
from ._errors import check_float64_tree, InputError
from ._tree import ravel


#: Default verdict threshold on the relative asymmetry (round-off of the automatic
#: coefficients is about 1e-13 relative at order 6).
GRADIENT_TOLERANCE = 1e-8


class GradientStructure(eqx.Module):
    r"""How far a field's Jacobian $J$ is from symmetric, measured with random probes.

    A field is (locally) a gradient iff $J = J^\top$. With Gaussian probes
    $u, v$, $\mathbb E\,(u^\top (J - J^\top) v)^2 = \|J - J^\top\|_F^2$, so

    $$\text{relative asymmetry} =
    \frac{\|J - J^\top\|_F}{\|J + J^\top\|_F + \|J - J^\top\|_F} \in [0, 1],$$

    0 for a gradient field, 1 for a purely rotational one (the bilinear game).

    **Attributes:**

    - `relative_asymmetry`: of the whole field.
    - `antisymmetric_norm`: $\|\tfrac12(J - J^\top)\|_F$ (estimate): the size of
      the non-gradient part of the linearised field.
    - `symmetric_norm`: $\|\tfrac12(J + J^\top)\|_F$ (estimate).
    - `coefficient_asymmetry`, `coefficient_antisymmetric_norm`: the same per
      coefficient $f_0, \dots, f_p$ of an `AbstractSeriesFlow` (`ModifiedFlow`,
      `CorrectedField`; else empty).
    - `tolerance`, `num_probes`; `is_gradient`: every relative asymmetry is at
      most `tolerance`; `coefficient_is_gradient`: the verdict per coefficient.
    """

    relative_asymmetry: float
    antisymmetric_norm: float
    symmetric_norm: float
    coefficient_asymmetry: tuple[float, ...]
    coefficient_antisymmetric_norm: tuple[float, ...]
    tolerance: float
    num_probes: int

    @property
    def coefficient_is_gradient(self) -> tuple[bool, ...]:
        r"""The verdict per coefficient $f_0, \dots, f_p$ (empty for a flow without them)."""
        return tuple(a <= self.tolerance for a in self.coefficient_asymmetry)

    @property
    def is_gradient(self) -> bool:
        return all(
            a <= self.tolerance for a in (self.relative_asymmetry, *self.coefficient_asymmetry)
        )

    def to_dict(self) -> dict:
        return {
            "relative_asymmetry": self.relative_asymmetry,
            "antisymmetric_norm": self.antisymmetric_norm,
            "symmetric_norm": self.symmetric_norm,
            "coefficient_asymmetry": list(self.coefficient_asymmetry),
            "coefficient_antisymmetric_norm": list(self.coefficient_antisymmetric_norm),
            "tolerance": self.tolerance,
            "num_probes": self.num_probes,
            "is_gradient": self.is_gradient,
        }

    def __str__(self) -> str:
        lines = [
            f"relative asymmetry {self.relative_asymmetry:.3e} "
            f"(||J_A||_F ~ {self.antisymmetric_norm:.3e}, ||J_S||_F ~ {self.symmetric_norm:.3e}; "
            f"{self.num_probes} probes): "
            + ("a gradient field" if self.is_gradient else "NOT a gradient field")
        ]
        for k, (a, n) in enumerate(
            zip(self.coefficient_asymmetry, self.coefficient_antisymmetric_norm)
        ):
            lines.append(f"  f_{k}: relative asymmetry {a:.3e}, ||J_A||_F ~ {n:.3e}")
        return "\n".join(lines)


def _norms(forms):
    """(||J_A||_F, ||J_S||_F, relative) from rows of (u^T J v, v^T J u) over probes."""
    forms = np.asarray(forms)
    anti = float(np.sqrt(np.mean((forms[:, 0] - forms[:, 1]) ** 2)))
    sym = float(np.sqrt(np.mean((forms[:, 0] + forms[:, 1]) ** 2)))
    relative = anti / (anti + sym) if anti + sym > 0 else 0.0
    return anti / 2, sym / 2, relative


@eqx.filter_jit
def _measure(flow, per_coefficient: bool, x, us, vs, args, unravel):
    """`(u^T J v, v^T J u)` per probe and per field; at module level so that it is cached."""

    def fields(z):
        point = unravel(z)
        whole = ravel(flow(0.0, point, args))[0]
        if not per_coefficient:
            return [whole]
        return [whole] + [ravel(f)[0] for f in flow.coefficients(point, args)]

    outputs, pullback = jax.vjp(fields, x)

    def forms(u, v):
        jacobian_v = jax.jvp(fields, (x,), (v,))[1]
        rows = []
        for k, jv in enumerate(jacobian_v):
            cotangent = [v if i == k else jnp.zeros_like(v) for i in range(len(outputs))]
            jt_v = pullback(cotangent)[0]
            rows.append(jnp.stack([u @ jv, jt_v @ u]))  # u^T J v, v^T J u
        return jnp.stack(rows)

    return jax.lax.map(lambda uv: forms(*uv), (us, vs))  # (probe, field, 2)


def measure_gradient_structure(
    flow,
    y: Y,
    args: Args,
    *,
    per_coefficient: bool,
    num_probes: int,
    key,
    tolerance: float,
) -> GradientStructure:
    """`driftlab.is_gradient_field`'s measurement; `per_coefficient` for series flows.

    Below both `flows` and `analysis` (the flows' modified losses check it, the
    analysis exposes it), so neither imports the other for it.
    """
    if not isinstance(num_probes, int) or num_probes < 1:
        raise InputError(f"`num_probes` must be a positive integer, got {num_probes!r}.")
    if not callable(flow):
        raise InputError("`flow` must be callable as `flow(t, y, args)`.")
    check_float64_tree(y, "y")
    key = jr.key(0) if key is None else key
    flat, unravel = ravel(y)

    key_u, key_v = jr.split(key)
    us = jr.normal(key_u, (num_probes, flat.size), flat.dtype)
    vs = jr.normal(key_v, (num_probes, flat.size), flat.dtype)
    forms = np.asarray(_measure(flow, per_coefficient, flat, us, vs, args, unravel))
    results = [_norms(forms[:, i]) for i in range(forms.shape[1])]
    return GradientStructure(
        relative_asymmetry=results[0][2],
        antisymmetric_norm=results[0][0],
        symmetric_norm=results[0][1],
        coefficient_asymmetry=tuple(r[2] for r in results[1:]),
        coefficient_antisymmetric_norm=tuple(r[0] for r in results[1:]),
        tolerance=float(tolerance),
        num_probes=num_probes,
    )
