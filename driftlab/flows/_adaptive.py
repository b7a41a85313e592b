"""Modified flows of RMSProp and Adam (without bias correction) on their slow manifolds."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import gradient_function
from ..integrators._maps import _preconditioned, Adam, AdamState, RMSProp, RMSPropState
from ..integrators._validity import is_concrete, region_problem, warn_outside_region
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]


def _saturation(grad, eps, eps_inside_sqrt: bool):
    r"""$s = 2v P'(v)/P(v)$ at $v = g^2$: $g^2/(g^2+\epsilon)$ or $|g|/(|g|+\epsilon)$."""
    if eps_inside_sqrt:
        return grad**2 / (grad**2 + eps)
    return jnp.abs(grad) / (jnp.abs(grad) + eps)


def _adaptive_field(loss, y, args, h, c1, c2, eps, eps_inside_sqrt):
    """`(F, grad, H F0)` for the adaptive flow with memory constants `c1`, `c2`."""
    arrays, grad_fn = gradient_function(loss, y, args)
    grad = grad_fn(arrays)
    denominator = jtu.tree_map(lambda g: _preconditioned(g**2, eps, eps_inside_sqrt), grad)
    f0 = jtu.tree_map(lambda g, p: -g / p, grad, denominator)
    h_f0 = jax.jvp(grad_fn, (arrays,), (f0,))[1]
    field = jtu.tree_map(
        lambda a, g, p, hf: (
            a + h * hf / p * ((c1 + 0.5) - (c2 + 0.5) * _saturation(g, eps, eps_inside_sqrt))
        ),
        f0,
        grad,
        denominator,
        h_f0,
    )
    return field, grad, h_f0


def _check_decay(name: str, value) -> None:
    if not 0 <= float(value) < 1:
        raise InputError(f"`{name}` must lie in [0, 1), got {float(value)}.")


class RMSPropFlow(AbstractFlow):
    r"""The order-1 modified flow of RMSProp on its slow manifold.

    For `driftlab.RMSProp`, $v' = \rho v + (1-\rho)g^2$,
    $\theta' = \theta - h\,g/P(v')$ with $P(v) = \sqrt{v+\epsilon}$
    (`eps_inside_sqrt=True`, the default, Cattaneo et al.'s convention) or
    $\sqrt v + \epsilon$, one step taking time $h$ (elementwise operations):

    $$\dot\theta = F_0 + \frac{h}{P}\odot\Big[\tfrac12 - \big(\tfrac{\rho}{1-\rho}
    + \tfrac12\big)s\Big]\odot HF_0, \qquad F_0 = -\frac{g}{P(g^2)},$$

    with $P = P(g^2)$ and $s = g^2/(g^2+\epsilon)$ (eps inside) or
    $|g|/(|g|+\epsilon)$ (outside). With eps inside, $HF_0 = -\nabla\|g\|_{1,\epsilon}$,
    $\|g\|_{1,\epsilon} = \sum_i\sqrt{g_i^2+\epsilon}$ (the perturbed one-norm): as
    $\epsilon\to0$ the correction is $+\frac{h\rho}{1-\rho}\frac{1}{P}\nabla\|g\|_1$,
    which *hinders* the decrease of the one-norm (anti-regularisation); as
    $\epsilon\to\infty$ it is GD's IGR term at learning rate $h/\sqrt\epsilon$.

    Derivation (verified against `driftlab.ModifiedFlow` and by measured order):
    along the flow, $v_{n+1} = (1-\rho)\sum_k\rho^k g^2(\theta_{n-k}) = g^2 -
    \frac{2h\rho}{1-\rho}g\odot HF_0 + O(h^2)$; expanding the step and subtracting
    $\frac h2 F_0'F_0$ gives the line above. It is not a gradient field
    (`modified_loss` raises). `slow_state` starts the map on the slow manifold.
    No bias correction (it makes the map non-autonomous).


    ??? cite "Reference"
        ```bibtex
        @inproceedings{cattaneo2024implicit,
          title={On the Implicit Bias of Adam},
          author={Cattaneo, Matias D. and Klusowski, Jason M. and Shigida, Boris},
          booktitle={International Conference on Machine Learning},
          year={2024}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    rho: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=True)
    order: ClassVar[int] = 1

    def __check_init__(self):
        _check_decay("rho", self.rho)
        if float(self.eps) < 0:
            raise InputError(f"`eps` must be non-negative, got {float(self.eps)}.")

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        warn_outside_region(self.outside_region(y, args))
        c2 = self.rho / (1 - self.rho)
        return _adaptive_field(self.loss, y, args, self.h, 0.0, c2, self.eps, self.eps_inside_sqrt)[
            0
        ]

    def outside_region(self, params: Y, args: Args) -> str | None:
        """Measured on `driftlab.RMSProp`'s linearisation at `slow_state(params)`."""
        if not is_concrete(params, self.h):
            return None
        step = RMSProp(self.loss, self.rho, self.eps, self.eps_inside_sqrt)
        return region_problem(step, self.slow_state(params, args), self.h, args)

    def slow_state(self, params: Y, args: Args) -> RMSPropState:
        r"""An `RMSProp` state on the slow manifold to $O(h^2)$:
        $v = g^2 - \frac{2h}{1-\rho}\,g\odot HF_0$."""
        _, grad, h_f0 = _adaptive_field(
            self.loss, params, args, self.h, 0.0, 0.0, self.eps, self.eps_inside_sqrt
        )
        nu = jtu.tree_map(lambda g, hf: g**2 - 2 * self.h * g * hf / (1 - self.rho), grad, h_f0)
        return RMSPropState(params, nu)


class AdamFlow(AbstractFlow):
    r"""The order-1 modified flow of Adam without bias correction, on its slow manifold.

    For `driftlab.Adam(..., bias_correction=False)`: $m' = \beta_1 m + (1-\beta_1)g$,
    $v' = \beta_2 v + (1-\beta_2)g^2$, $\theta' = \theta - h\,m'/P(v')$, with
    $P(v) = \sqrt v + \epsilon$ (`eps_inside_sqrt=False`, optax's default) or
    $\sqrt{v + \epsilon}$; one step takes time $h$ (elementwise operations):

    $$\dot\theta = F_0 + \frac{h}{P}\odot\Big[\big(\tfrac{\beta_1}{1-\beta_1}+\tfrac12\big)
    - \big(\tfrac{\beta_2}{1-\beta_2}+\tfrac12\big)s\Big]\odot HF_0,
    \qquad F_0 = -\frac{g}{P(g^2)},$$

    with $s = g^2/(g^2+\epsilon)$ (eps inside) or $|g|/(|g|+\epsilon)$ (outside).
    With eps inside and $HF_0 = -\nabla\|g\|_{1,\epsilon}$: as $\epsilon\to0$ the
    correction is $-h\big(\frac{\beta_1}{1-\beta_1} - \frac{\beta_2}{1-\beta_2}\big)
    \frac1P\nabla\|g\|_1$, penalising the one-norm only when $\beta_1 > \beta_2$ and
    hindering its decrease in the usual case $\beta_2 > \beta_1$, as Cattaneo,
    Klusowski & Shigida (2024) state; as $\epsilon\to\infty$ it is heavy-ball's
    (EMA form) $-\frac{h(1+\beta_1)}{2(1-\beta_1)}\frac{Hg}{\epsilon}$.

    Derivation: along the flow, $m_{n+1} = g - \frac{h\beta_1}{1-\beta_1}HF_0$ and
    $v_{n+1} = g^2 - \frac{2h\beta_2}{1-\beta_2}g\odot HF_0$ to $O(h^2)$; expand the
    step and subtract $\frac h2F_0'F_0$. Bias correction is not modelled (it makes
    the map non-autonomous; the paper's bias-corrected ODE tends to this one as
    the step count grows). Not a gradient field (`modified_loss` raises).


    ??? cite "Reference"
        ```bibtex
        @inproceedings{cattaneo2024implicit,
          title={On the Implicit Bias of Adam},
          author={Cattaneo, Matias D. and Klusowski, Jason M. and Shigida, Boris},
          booktitle={International Conference on Machine Learning},
          year={2024}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    b1: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    b2: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.999)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=False)
    order: ClassVar[int] = 1

    def __check_init__(self):
        _check_decay("b1", self.b1)
        _check_decay("b2", self.b2)
        if float(self.eps) < 0:
            raise InputError(f"`eps` must be non-negative, got {float(self.eps)}.")

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        warn_outside_region(self.outside_region(y, args))
        c1, c2 = self.b1 / (1 - self.b1), self.b2 / (1 - self.b2)
        return _adaptive_field(self.loss, y, args, self.h, c1, c2, self.eps, self.eps_inside_sqrt)[
            0
        ]

    def outside_region(self, params: Y, args: Args) -> str | None:
        """Measured on `driftlab.Adam(bias_correction=False)`'s linearisation at `slow_state`."""
        if not is_concrete(params, self.h):
            return None
        step = Adam(self.loss, self.b1, self.b2, self.eps, self.eps_inside_sqrt, False)
        return region_problem(step, self.slow_state(params, args), self.h, args)

    def slow_state(self, params: Y, args: Args) -> AdamState:
        r"""An `Adam(bias_correction=False)` state on the slow manifold to $O(h^2)$:
        $m = g - \frac{h}{1-\beta_1}HF_0$, $v = g^2 - \frac{2h}{1-\beta_2}g\odot HF_0$."""
        _, grad, h_f0 = _adaptive_field(
            self.loss, params, args, self.h, 0.0, 0.0, self.eps, self.eps_inside_sqrt
        )
        mu = jtu.tree_map(lambda g, hf: g - self.h * hf / (1 - self.b1), grad, h_f0)
        nu = jtu.tree_map(lambda g, hf: g**2 - 2 * self.h * g * hf / (1 - self.b2), grad, h_f0)
        return AdamState(params, mu, nu, None)
