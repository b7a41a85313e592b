"""Modified flows of simultaneous and alternating gradient descent in two-player games."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._tree import grad, split
from ._base import AbstractFlow


Loss = Callable[[Y, Args], Scalar]


def _scaled_fields(loss_phi, loss_theta, alpha, lam, args):
    r"""$y \mapsto (\alpha f, \lambda g)$ with $f = -\nabla_\phi L_1$, $g = -\nabla_\theta L_2$."""

    def field(y):
        f = grad(loss_phi, y, args)[0]
        g = grad(loss_theta, y, args)[1]
        return (
            jtu.tree_map(lambda x: -alpha * x, f),
            jtu.tree_map(lambda x: -lam * x, g),
        )

    return field


class _AbstractGameFlow(AbstractFlow):
    loss_phi: eqx.AbstractVar[Loss]
    loss_theta: eqx.AbstractVar[Loss]
    alpha: eqx.AbstractVar[Float[Array, ""]]
    lam: eqx.AbstractVar[Float[Array, ""]]

    def _zeroth_and_drift(self, y, args):
        """`(F, F'F)` for `F = (alpha f, lam g)`, by one Jacobian-vector product.

        Over the players' array leaves: a model's static leaves (`None` in both) stay fixed.
        """
        scaled = _scaled_fields(self.loss_phi, self.loss_theta, self.alpha, self.lam, args)
        arrays, static = split(y)
        field = lambda a: scaled(eqx.combine(a, static))
        value = field(arrays)
        return value, jax.jvp(field, (arrays,), (value,))[1]


class SimultaneousGameFlow(_AbstractGameFlow):
    r"""The order-1 modified flow of simultaneous GD in a two-player game.

    Player $\phi$ follows $f = -\nabla_\phi L_1$ with step $\alpha h$, player
    $\theta$ follows $g = -\nabla_\theta L_2$ with step $\lambda h$; one step takes
    time $h$. The update is explicit Euler on $F = (\alpha f, \lambda g)$, so
    $\dot y = F - \frac h2 F'F$:

    $$\dot\phi = \alpha f - \frac h2\left(\alpha^2 f_\phi f + \alpha\lambda f_\theta g\right),
    \qquad
    \dot\theta = \lambda g - \frac h2\left(\lambda\alpha g_\phi f + \lambda^2 g_\theta g\right).$$

    The self term carries the player's own step size squared, the cross term the
    product of both players' step sizes. The state is `(phi, theta)`; the losses
    are called as `loss_phi((phi, theta), args)`, as `driftlab.SimultaneousGD`
    takes them.


    ??? cite "Reference"
        ```bibtex
        @inproceedings{rosca2021discretization,
          title={Discretization Drift in Two-Player Games},
          author={Rosca, Mihaela and Wu, Yan and Dherin, Benoit and Barrett, David G. T.},
          booktitle={International Conference on Machine Learning},
          year={2021}
        }
        ```
    """

    loss_phi: Loss
    loss_theta: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    alpha: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    lam: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    order: ClassVar[int] = 1

    def __call__(self, t: RealScalarLike, y: tuple[Y, Y], args: Args) -> tuple[Y, Y]:
        del t
        value, drift = self._zeroth_and_drift(y, args)
        return jtu.tree_map(lambda v, d: v - 0.5 * self.h * d, value, drift)


class AlternatingGameFlow(_AbstractGameFlow):
    r"""The order-1 modified flow of alternating GD ($\phi$ first) in a two-player game.

    $\phi_{n+1} = \phi_n + \alpha h f(\phi_n, \theta_n)$, then
    $\theta_{n+1} = \theta_n + \lambda h g(\phi_{n+1}, \theta_n)$; with
    $X = (\alpha f, 0)$, $Y = (0, \lambda g)$ the step is Euler on $X$ then on
    $Y$, whose order-1 field is $X + Y - \frac h2(X+Y)'(X+Y) + hY'X$:

    $$\dot\phi = \alpha f - \frac h2\left(\alpha^2 f_\phi f + \alpha\lambda f_\theta g\right),
    \qquad
    \dot\theta = \lambda g + \frac h2\left(\lambda\alpha g_\phi f - \lambda^2 g_\theta g\right).$$

    The sign of $\theta$'s cross term flips relative to `SimultaneousGameFlow`.


    ??? cite "Reference"
        ```bibtex
        @inproceedings{rosca2021discretization,
          title={Discretization Drift in Two-Player Games},
          author={Rosca, Mihaela and Wu, Yan and Dherin, Benoit and Barrett, David G. T.},
          booktitle={International Conference on Machine Learning},
          year={2021}
        }
        ```
    """

    loss_phi: Loss
    loss_theta: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    alpha: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    lam: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    order: ClassVar[int] = 1

    def __call__(self, t: RealScalarLike, y: tuple[Y, Y], args: Args) -> tuple[Y, Y]:
        del t
        value, drift = self._zeroth_and_drift(y, args)
        phi, theta = y
        phi_arrays, phi_static = split(phi)

        def theta_field(phi_arrays_):
            phi_ = eqx.combine(phi_arrays_, phi_static)
            return jtu.tree_map(
                lambda x: -self.lam * x, grad(self.loss_theta, (phi_, theta), args)[1]
            )

        # Y'X: the change of lam * g along phi's field alpha f.
        cross = jax.jvp(theta_field, (phi_arrays,), (value[0],))[1]
        phi_dot = jtu.tree_map(lambda v, d: v - 0.5 * self.h * d, value[0], drift[0])
        theta_dot = jtu.tree_map(
            lambda v, d, c: v - 0.5 * self.h * d + self.h * c, value[1], drift[1], cross
        )
        return phi_dot, theta_dot
