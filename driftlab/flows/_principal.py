"""The principal flow of gradient descent (Rosca, Wu, Qin & Dherin 2023): dense and Lanczos."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._lanczos import lanczos
from .._tree import array_leaves, grad, ravel, split
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]

#: Above this many parameters a solve of the dense field is advised against (`cost_advice`).
DENSE_FIELD_LIMIT = 256
#: `|1 - h lambda|` at or below this counts as `h lambda = 1`, where the flow does not exist.
SINGULAR_TOLERANCE = 1e-12
#: Below this `|h lambda|`, `log(1 - x)/x` is evaluated by its series `-1 - x/2 - x^2/3`.
_SERIES_BELOW = 1e-5


def principal_coefficient(x: Array, *, complex_: bool) -> Array:
    r"""$c(x) = \log(1 - x)/x$ (principal branch), with $c(0) = -1$ by continuity.

    Real when `complex_` is false (then only $x < 1$ is meaningful); else complex,
    $c(x) = (\log(x - 1) + i\pi)/x$ for $x > 1$.
    """
    small = jnp.abs(x) < _SERIES_BELOW
    safe = jnp.where(small, 0.5, x)
    if complex_:
        value = jnp.log((1 - safe).astype(jnp.complex128)) / safe
    else:
        value = jnp.log1p(-safe) / safe
    return jnp.where(small, -1 - x / 2 - x**2 / 3, value)


class PrincipalFlow(AbstractFlow):
    r"""The principal flow of gradient descent (Rosca, Wu, Qin & Dherin 2023).

    $$\dot\theta = \sum_i \frac{\log(1 - h\lambda_i)}{h\lambda_i}\,(g\cdot u_i)\,u_i,$$

    with $(\lambda_i, u_i)$ the eigenpairs of $H = \nabla^2 L(\theta)$ and
    $g = \nabla L(\theta)$; $\lambda_i = 0$ contributes its limit $-g\cdot u_i$.
    On a quadratic it is $\frac1h\log(I - hA)\,(\theta - \theta^*)$, whose time-$nh$
    flow is exactly $(I - hA)^n$: GD's iterates lie on it for every $h$. When some
    $h\lambda_i > 1$ the coefficient is complex ($\log(h\lambda_i - 1) + i\pi$,
    principal branch): pass a complex128 state; its values at multiples of $h$
    are GD's real iterates (on a quadratic), so it follows GD's oscillation and
    its divergence beyond $h\lambda = 2$. At $h\lambda_i = 1$ exactly the flow
    does not exist (GD removes that direction in one step): the field raises.

    Expanding $\log(1-x)/x = -1 - x/2 - x^2/3 - \cdots$ gives $-g - \frac h2 Hg -
    \frac{h^2}3 H^2 g - \cdots$: it agrees with GD's modified flow through order 1
    (`order = 1`) and keeps, to all orders, the terms that do not involve third
    derivatives of $L$.

    For a complex state $\theta = x + iz$ the gradient is continued holomorphically
    to first order about the real part, $g(x + iz) \approx g(x) + iH(x)z$, exact on
    quadratics; the eigenpairs are those of $H(x)$.

    **Methods** (`method`):

    - `"dense"`: forms $H$ and diagonalises it at every evaluation (small models).
    - `"lanczos"`: matrix-free. Runs `num_iterations` Lanczos steps on
      Hessian-vector products started from the vector $v$ the field acts on
      ($v = g$), takes the `k` largest Ritz pairs $(\lambda_j, u_j)$ as the
      principal part, and treats the remainder to first order in $h$, i.e. with
      $\log(1-x)/x \approx -1 - x/2$ (IGR):

      $$\dot\theta = -v - \frac h2 Hv + \sum_{j\le k}\Big[\frac{\log(1-h\lambda_j)}{h\lambda_j}
      + 1 + \frac{h\lambda_j}2\Big](v\cdot u_j)\,u_j .$$

      For exact eigenpairs this is
      $\sum_{j\le k} c(h\lambda_j)(v\cdot u_j)u_j - v_\perp - \frac h2Hv_\perp$ with
      $v_\perp = v - \sum_{j\le k}(v\cdot u_j)u_j$; written as above, its order-0
      and order-1 parts are exact ($-g - \frac h2 Hg$, GD's) even when the Ritz
      pairs have not converged, and the bracket is $O(h^2\lambda_j^2)$. The
      remainder's error is $\frac{h^2}{3}\|H^2 v_\perp\| + \cdots$. With `k = 0`
      the field is IGR's; with `k = num_iterations = n`, the dense field.
      Cost per evaluation: one gradient and `num_iterations + 1` Hessian-vector
      products (twice that for a complex state). `num_iterations` defaults to
      `max(2k, k + 10)`.

      Cutting at `k` makes the field rough where the $k$-th and $(k+1)$-th Ritz
      values nearly meet (a cluster of eigenvalues across the cut, e.g. dozens
      with $h\lambda$ between 1 and 3 at the edge of stability): $v$'s weight
      passes from one Ritz vector to the other within a tiny move of the state,
      and the field changes by a sizable part of its norm there, so an adaptive
      solver crawls (on a 4,000-parameter deep linear network at the edge, 8% of
      the field's norm within 0.5% of a GD step; 177 solver steps per GD step
      at `rtol = 1e-7` with `k = 3` of 13). With `k = num_iterations` nothing is
      cut: the field is the Lanczos approximation $\|v\|\,V c(hT) e_1$ of
      $c(hH)\,v$ ($T$ the tridiagonal matrix, $V$ the Krylov basis), smooth
      wherever no Ritz value equals $1/h$ (7 solver steps per GD step there).

    ??? cite "Reference"
        ```bibtex
        @article{rosca2023continuous,
          title={On a continuous time model of gradient descent dynamics and
                 instability in deep learning},
          author={Rosca, Mihaela and Wu, Yan and Qin, Chongli and Dherin, Benoit},
          journal={Transactions on Machine Learning Research},
          year={2023}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    method: str = eqx.field(static=True, default="dense")
    k: int = eqx.field(static=True, default=10)
    num_iterations: int | None = eqx.field(static=True, default=None)
    order: ClassVar[int] = 1

    def __check_init__(self):
        if self.method not in ("dense", "lanczos"):
            raise InputError(f"`method` must be 'dense' or 'lanczos', got {self.method!r}.")
        if not isinstance(self.k, int) or self.k < 0:
            raise InputError(f"`k` must be a non-negative integer, got {self.k!r}.")
        if self.num_iterations is not None and self.num_iterations < max(self.k, 1):
            raise InputError(
                f"`num_iterations` ({self.num_iterations}) must be at least `k` ({self.k})."
            )

    def cost_advice(self, params: Y) -> str | None:
        r"""Above `DENSE_FIELD_LIMIT` parameters, the dense field's cost and the Lanczos option."""
        n = sum(leaf.size for leaf in array_leaves(params))
        if self.method != "dense" or n <= DENSE_FIELD_LIMIT:
            return None
        return (
            f"PrincipalFlow(method='dense') forms and diagonalises the {n} x {n} Hessian at "
            "every field evaluation, and a solve makes hundreds (a 433-parameter MLP: 7 "
            "minutes against 10 s); pass method='lanczos' (matrix-free; with k = "
            f"num_iterations = {n} it is the dense field)."
        )

    def _apply(self, eigenvalues, eigenvectors, vector, complex_: bool, shift=0.0):
        x = self.h * eigenvalues
        if complex_:
            singular = jnp.any(jnp.abs(1 - x) <= SINGULAR_TOLERANCE)
        else:
            singular = jnp.any(x >= 1 - SINGULAR_TOLERANCE)
        coefficients = principal_coefficient(x, complex_=complex_) + shift
        projection = eigenvectors.T @ vector
        return eigenvectors @ (coefficients * projection), singular

    def _field_dense(self, grad_flat, x, vectors, complex_):
        hessian = jax.jacfwd(grad_flat)(x)
        eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
        outs = [self._apply(eigenvalues, eigenvectors, v, complex_) for v in vectors]
        return [o[0] for o in outs], [o[1] for o in outs]

    def _field_lanczos(self, hvp, vectors, complex_):
        num_iterations = self.num_iterations or max(2 * self.k, self.k + 10)
        num_iterations = min(num_iterations, vectors[0].size)
        k = min(self.k, num_iterations)
        fields, flags = [], []
        for v in vectors:
            values, ritz = lanczos(hvp, v, num_iterations)
            values, ritz = values[num_iterations - k :], ritz[:, num_iterations - k :]
            x = self.h * values
            correction, singular = self._apply(values, ritz, v, complex_, shift=1 + x / 2)
            fields.append(correction - v - 0.5 * self.h * hvp(v))
            flags.append(singular)
        return fields, flags

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        arrays, static = split(y)
        complex_ = any(jnp.iscomplexobj(leaf) for leaf in array_leaves(arrays))
        x, unravel_real = ravel(eqx.combine(jtu.tree_map(jnp.real, arrays), static))
        grad_flat = lambda p: ravel_pytree(grad(self.loss, unravel_real(p), args))[0]
        gradient, hvp = jax.linearize(grad_flat, x)
        vectors = [gradient]
        if complex_:
            vectors.append(hvp(ravel_pytree(jtu.tree_map(jnp.imag, arrays))[0]))
        if self.method == "dense":
            fields, flags = self._field_dense(grad_flat, x, vectors, complex_)
        else:
            fields, flags = self._field_lanczos(hvp, vectors, complex_)
        field = fields[0] + 1j * fields[1] if complex_ else fields[0]
        if complex_:
            field = eqx.error_if(
                field,
                jnp.any(jnp.stack(flags)),
                "PrincipalFlow: h * lambda_i = 1 for an eigenvalue of the Hessian; the "
                "principal flow does not exist there (log(1 - h lambda) = -inf).",
            )
        else:
            field = eqx.error_if(
                field,
                jnp.any(jnp.stack(flags)),
                "PrincipalFlow: h * lambda_i >= 1 for an eigenvalue of the Hessian, where "
                "the field is complex (or, at h * lambda_i = 1, does not exist); measure with "
                "`complex_state=True` (local_error, global_error, drift), or call the field "
                "on a complex128 copy of the parameters.",
            )
        _, unravel = ravel_pytree(arrays)
        return unravel(field)
