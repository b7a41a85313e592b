"""The modified flow of heavy-ball momentum on its slow manifold."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._tree import grad, tree_vdot
from ..integrators._maps import HeavyBall, MomentumState
from ..integrators._validity import is_concrete, region_problem, warn_outside_region
from ._base import AbstractFlow
from ._gradient import hessian_gradient_product


Loss = Callable[[Y, Args], Scalar]


def heavy_ball_slow_field_matrix(a, h: float, beta: float) -> np.ndarray:
    r"""$\frac1h\log r(hA)$: heavy-ball's exact slow-manifold field on $L = \frac12 y^\top A y$.

    $r(x) = \frac12\left(1 + \beta - x + \sqrt{(1 + \beta - x)^2 - 4\beta}\right)$ is
    the slow root of $r^2 - (1 + \beta - x)r + \beta = 0$. It is real only while
    $h\lambda < (1 - \sqrt\beta)^2$ for every eigenvalue $\lambda$ of $A$; beyond,
    both roots have modulus $\sqrt\beta$ and there is no real slow manifold.

    **Raises:** `InputError` when some $h\lambda \ge (1 - \sqrt\beta)^2$.
    """
    a = np.asarray(a, dtype=np.float64)
    values, vectors = np.linalg.eigh(0.5 * (a + a.T))
    x = h * values
    edge = (1 - np.sqrt(beta)) ** 2
    if np.any(x >= edge):
        raise InputError(
            f"`h` * lambda_max = {x.max():.6g} >= (1 - sqrt(beta))^2 = {edge:.6g}: heavy-ball "
            "has no real slow manifold there (both roots have modulus sqrt(beta))."
        )
    b = 1 + beta - x
    root = 0.5 * (b + np.sqrt(b**2 - 4 * beta))
    return (vectors * (np.log(root) / h)) @ vectors.T


class HeavyBallFlow(AbstractFlow):
    r"""The order-1 modified flow of heavy-ball momentum on its slow manifold.

    For $\theta_{n+1} = \theta_n - h\nabla L(\theta_n) + \beta(\theta_n - \theta_{n-1})$
    (`driftlab.HeavyBall`, optax form $m' = \beta m + g$, $\theta' = \theta - hm'$:
    the same recurrence), with one step taking time $h$:

    $$\dot\theta = -\frac{1}{1-\beta}\nabla\tilde L,\qquad
    \tilde L = L + \frac{h(1+\beta)}{4(1-\beta)^2}\|\nabla L\|^2,$$

    i.e. gradient flow at the effective learning rate $h/(1-\beta)$ plus an IGR-like
    term. Derived from $m_{n+1} = \sum_k\beta^k g(\theta_{n-k})$ along the flow;
    on a quadratic it is the first-order part of the exact slow field
    $\frac1h\log r(hA)$ (`heavy_ball_slow_field_matrix`). The iterates follow it
    when they start on the slow manifold (`slow_state`); from a zero buffer they
    approach it at rate $\beta^n$. `modified_loss` returns
    $\tilde L/(1-\beta)$, so that $\dot\theta = -\nabla(\texttt{modified\_loss})$.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{ghosh2023implicit,
          title={Implicit regularization in Heavy-ball momentum accelerated
                 stochastic gradient descent},
          author={Ghosh, Avrajit and Lyu, He and Zhang, Xitong and Wang, Rongrong},
          booktitle={International Conference on Learning Representations},
          year={2023}
        }
        @article{kovachki2021continuous,
          title={Continuous Time Analysis of Momentum Methods},
          author={Kovachki, Nikola B. and Stuart, Andrew M.},
          journal={Journal of Machine Learning Research},
          volume={22}, number={17}, pages={1--40},
          year={2021}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    beta: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    order: ClassVar[int] = 1

    def __check_init__(self):
        if not 0 <= float(self.beta) < 1:
            raise InputError(f"`beta` must lie in [0, 1), got {float(self.beta)}.")

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        warn_outside_region(self.outside_region(y, args))
        grad, hessian_grad = hessian_gradient_product(self.loss, y, args)
        scale = self.h * (1 + self.beta) / (2 * (1 - self.beta) ** 2)
        return jtu.tree_map(lambda g, hg: -(g + scale * hg) / (1 - self.beta), grad, hessian_grad)

    def outside_region(self, params: Y, args: Args) -> str | None:
        """Measured on `driftlab.HeavyBall`'s linearisation at `slow_state(params)`."""
        if not is_concrete(params, self.h):
            return None
        step = HeavyBall(self.loss, self.beta)
        return region_problem(step, self.slow_state(params, args), self.h, args)

    def modified_loss(self, y: Y, args: Args) -> Scalar:
        g = grad(self.loss, y, args)
        penalty = self.h * (1 + self.beta) / (4 * (1 - self.beta) ** 2) * tree_vdot(g, g)
        return (self.loss(y, args) + penalty) / (1 - self.beta)

    def slow_state(self, params: Y, args: Args) -> MomentumState:
        r"""A `driftlab.HeavyBall` state on the slow manifold, to $O(h^2)$.

        The buffer before the step is $m = \frac{g}{1-\beta} + \frac{h\,Hg}{(1-\beta)^3}$,
        the history $\sum_k \beta^k g(\theta_{-1-k})$ along this flow.
        """
        grad, hessian_grad = hessian_gradient_product(self.loss, params, args)
        momentum = jtu.tree_map(
            lambda g, hg: g / (1 - self.beta) + self.h * hg / (1 - self.beta) ** 3,
            grad,
            hessian_grad,
        )
        return MomentumState(params, momentum)
