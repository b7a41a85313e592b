"""The central flow of gradient descent at the edge of stability (Cohen, Damian et al. 2025)."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import InputError
from .._lanczos import eigsh
from .._tree import grad as tree_grad, ravel, split
from ..integrators._solve import _OnArrays
from ._base import AbstractFlow
from ._sdcp import pair_indices, smat, solve_sdcp, svec


Loss = Callable[[Y, Args], Scalar]


class CentralQuantities(eqx.Module):
    r"""What the central flow solves for at one point $w$ (for plots and checks).

    **Attributes:**

    - `eigenvalues`: the top-`k` Hessian eigenvalues $\lambda_i$ (Ritz values), ascending.
    - `eigenvectors`: the matching unit vectors $u_i$ (ravelled, as columns).
    - `X`: the $k\times k$ matrix $X\succeq 0$; $\Sigma = UXU^\top$ is the covariance
      of GD's oscillation that the flow accounts for. Zero below the edge of stability.
    - `predicted_S`: $S(\text{next}) = \tfrac2h I - U^\top HU$ one lookahead later,
      $\succeq 0$ and complementary to `X`.
    - `loss`: $L(w)$; `predicted_loss`: $L(w) + \tfrac12\langle H, \Sigma\rangle$,
      the central flow's prediction of GD's time-averaged loss.
    - `velocity`: the field $\dot w$ (ravelled).
    - `lanczos_products`: the Hessian-vector products Lanczos spent.
    """

    eigenvalues: Float[Array, " k"]
    eigenvectors: Float[Array, "n k"]
    X: Float[Array, "k k"]
    predicted_S: Float[Array, "k k"]
    loss: Float[Array, ""]
    predicted_loss: Float[Array, ""]
    velocity: Float[Array, " n"]
    lanczos_products: Int[Array, ""]


def third_derivative_rows(grad_flat, w: Array, vectors: Array) -> Array:
    r"""The rows $c_{ij}\nabla_w(u_i^\top \nabla^2L(w)\, u_j)$, $i \le j$ in `svec` order.

    Each is $\nabla^3 L(w)[u_i, u_j, \cdot\,]$, the derivative of the
    Hessian-vector product $H(w)u_j$ along $u_i$ (a `jvp` of a `jvp` of the
    gradient); $c_{ii} = 1$, $c_{ij} = \sqrt 2$ off the diagonal, so that
    $\sum_{ij} X_{ij}\nabla(u_i^\top H u_j)$ = `rows.T @ svec(X)`.
    """
    i, j = pair_indices(vectors.shape[1])
    hvp_along = lambda a, b: jax.jvp(lambda x: jax.jvp(grad_flat, (x,), (b,))[1], (w,), (a,))[1]
    rows = jax.vmap(hvp_along)(vectors.T[i], vectors.T[j])
    return rows * jnp.where(i == j, 1.0, jnp.sqrt(2.0))[:, None]


class CentralFlow(AbstractFlow):
    r"""The central flow of gradient descent (Cohen, Damian, Talwalkar, Kolter & Lee 2025).

    Gradient descent with step $h$ at the edge of stability oscillates along the
    top Hessian eigenvectors while its sharpness hovers at $2/h$; the central flow
    models its *time-averaged* trajectory. In driftlab's time (one GD step takes
    time $h$; the paper's time in steps is $t/h$):

    $$\dot w = -\Big[\nabla L(w) + \tfrac12\nabla_w\langle \nabla^2 L(w), \Sigma\rangle\Big],
    \qquad \Sigma = U X U^\top,$$

    with $U = [u_1, \dots, u_k]$ the top-$k$ Hessian eigenvectors (held fixed in the
    derivative: $\nabla_w\langle H, \Sigma\rangle = \sum_{ij} X_{ij}\nabla_w(u_i^\top H u_j)$,
    i.e. third derivatives $\nabla^3 L[u_i, u_j]$ for the $k(k+1)/2$ pairs $i \le j$, each a
    `jvp` of a Hessian-vector product). $X \succeq 0$ keeps the sharpness at $2/h$: with
    $S = \tfrac2h I - U^\top H U$ and its rate
    $\dot S_{ij} = -\nabla(u_i^\top H u_j)\cdot \dot w$ (linear in $X$), $X$ solves the
    semidefinite complementarity problem

    $$X \succeq 0, \qquad S_+ := S + \tau\dot S(X) \succeq 0, \qquad \langle X, S_+\rangle = 0,$$

    for a lookahead $\tau$ (`lookahead`). Writing $G$ for the rows
    $\nabla(u_i^\top H u_j)$ (`svec`-scaled), $\dot w = -g - \tfrac12 G^\top x$ and
    $\dot S = Gg + \tfrac12 GG^\top x$, so $S_+/\tau = \mathcal Q x + c$ with the PSD
    $\mathcal Q = \tfrac12 GG^\top$ and $c = S/\tau + Gg$: the SDCP is the optimality
    condition of $\min_{X\succeq0}\tfrac12\langle X,\mathcal Q X\rangle + \langle c, X\rangle$.
    Below the threshold (and at least $\tau|\dot S|$ below it) $X = 0$ and the
    field is gradient flow's, $-\nabla L$ (the paper's $-h\nabla L$ in steps).

    **Integration.** The lookahead is drift control: where the sharpness would
    exceed $2/h$ within time $\tau$, $X$ turns on just enough to hold it at
    $2/h$ (and pulls it back at rate $1/\tau$ if it got above). Explicit Euler with
    step $\tau$ on this field (`integrate`) is exactly the authors' position-level
    time stepping ($S$ after each substep is $\succeq 0$ to first order); its
    error, $O(\tau)$, is measured by refining `substeps` (see the gallery page).

    **On device.** The eigenpairs come from Lanczos with full reorthogonalisation
    on Hessian-vector products from a fixed random start (`driftlab._lanczos`),
    the SDCP from a JAX solver (closed form at $k=1$; accelerated projected
    gradient on the PSD cone plus a semismooth Newton polish for $k \le 8$):
    everything is jittable, nothing goes to the host. Cost per field
    evaluation: one gradient, at most `num_iterations` Hessian-vector products,
    $k(k+1)/2$ third-derivative products (forward over forward over reverse).

    **Arguments:**

    - `loss`: `loss(params, args)`.
    - `h`: GD's step size (the threshold is $2/h$).
    - `k`: how many top eigendirections may oscillate (static, $1 \le k \le 8$).
    - `lookahead`: $\tau$, in driftlab time; defaults to `h / 4` (the authors' four
      substeps per step); pass the integrator's step.
    - `num_iterations`: the cap on Lanczos products (default `k + 40`).

    `predicted_loss(w, args)` is GD's predicted time-averaged loss;
    `quantities(w, args)` returns `X`, the eigenvalues and the rest
    (`CentralQuantities`). There is no central flow where the sharpness exceeds
    $2/h$ and the third derivative cannot bring it down (e.g. a quadratic
    beyond $h\lambda = 2$, where GD diverges): the field raises there.

    Checked against the authors' implementation (`central_flows_jax`, same start,
    their swish-MLP example with $k = 5$, 1000 steps): trajectories agree to
    5e-6 relative, losses to 2e-6 (`benchmarks/central_flow_sidebyside.py`).

    Not here: the preconditioned form for RMSProp ($h \to P^{-1}$, the sharpness
    of $P^{-1/2}HP^{-1/2}$, and the preconditioner's own state driven by the
    averaged squared gradient), and heavy-ball, whose oscillation lives in the
    joint (parameter, momentum) state with threshold $h\lambda = 2(1+\beta)$;
    the paper derives neither, and the time-averaging argument would have to
    be redone for the momentum buffer.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{cohen2025central,
          title={Understanding Optimization in Deep Learning with Central Flows},
          author={Cohen, Jeremy M. and Damian, Alex and Talwalkar, Ameet and
                  Kolter, J. Zico and Lee, Jason D.},
          booktitle={International Conference on Learning Representations},
          year={2025},
          note={arXiv:2410.24206}
        }
        ```
    """

    loss: Loss
    h: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    k: int = eqx.field(static=True, default=1)
    lookahead: Float[Array, ""] | None = eqx.field(default=None)
    num_iterations: int | None = eqx.field(static=True, default=None)
    order: ClassVar[int] = 0

    def __check_init__(self):
        if not isinstance(self.k, int) or not 1 <= self.k <= 8:
            raise InputError(f"`k` must be an integer in [1, 8], got {self.k!r}.")
        if not float(self.h) > 0:
            raise InputError(f"`h` must be positive, got {float(self.h)}.")
        if self.lookahead is not None and not float(self.lookahead) > 0:
            raise InputError(f"`lookahead` must be positive, got {self.lookahead}.")
        if self.num_iterations is not None and self.num_iterations < self.k:
            raise InputError(
                f"`num_iterations` ({self.num_iterations}) must be at least `k` ({self.k})."
            )

    @property
    def tau(self) -> Float[Array, ""]:
        """The lookahead in use: `lookahead`, or `h / 4`."""
        return self.h / 4 if self.lookahead is None else jnp.asarray(self.lookahead)

    def quantities(self, y: Y, args: Args) -> CentralQuantities:
        r"""`X`, the top eigenpairs, $S_+$, the loss, the predicted loss and $\dot w$ at `y`."""
        w, unravel = ravel(y)
        loss_flat = lambda x: self.loss(unravel(x), args)
        grad_flat = lambda x: ravel_pytree(tree_grad(self.loss, unravel(x), args))[0]
        loss, grad = jax.value_and_grad(loss_flat)(w)
        hvp = lambda v: jax.jvp(grad_flat, (w,), (v,))[1]
        k = min(self.k, w.size)
        cap = min(self.num_iterations or k + 40, w.size)
        start = jr.normal(jr.key(0), w.shape, w.dtype)
        eigenvalues, vectors, _, products = eigsh(hvp, start, k, max_iterations=cap, tol=1e-10)
        rows = third_derivative_rows(grad_flat, w, vectors)
        gap = 2 / self.h - eigenvalues
        q = 0.5 * rows @ rows.T
        c = svec(jnp.diag(gap)) / self.tau + rows @ grad
        x = solve_sdcp(q, c, k)
        x = eqx.error_if(
            x,
            ~jnp.all(jnp.isfinite(x)),
            "CentralFlow: the sharpness exceeds 2/h and no X >= 0 can bring it back "
            "(the third derivative along the top eigenvectors vanishes, e.g. a quadratic "
            "loss): there is no central flow here, and GD diverges.",
        )
        X = smat(x, k)
        velocity = -(grad + 0.5 * rows.T @ x)
        return CentralQuantities(
            eigenvalues=eigenvalues,
            eigenvectors=vectors,
            X=X,
            predicted_S=self.tau * smat(q @ x + c, k),
            loss=loss,
            predicted_loss=loss + 0.5 * jnp.sum(jnp.diag(X) * eigenvalues),
            velocity=velocity,
            lanczos_products=products,
        )

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        _, unravel = ravel_pytree(split(y)[0])
        return unravel(self.quantities(y, args).velocity)

    def predicted_loss(self, y: Y, args: Args) -> Scalar:
        r"""GD's predicted time-averaged loss, $L(w) + \tfrac12\langle\nabla^2L(w), \Sigma\rangle$.

        Not a modified loss: the field is not its gradient.
        """
        return self.quantities(y, args).predicted_loss

    def integrate(
        self, y0: Y, num_steps: int, args: Args = None, *, substeps: int = 4
    ) -> tuple[Y, CentralQuantities]:
        r"""The central flow over `num_steps` GD steps, by Euler with step $\tau = h/$`substeps`.

        Explicit Euler (`diffrax.Euler`, constant steps) with the lookahead set to
        the step: the authors' position-level scheme. The state is saved at every
        GD step, $t = nh$.

        **Returns:** `(ys, quantities)`: the states at $t = 0, h, \dots$, stacked,
        and the `CentralQuantities` at each of them (stacked).
        """
        if not isinstance(substeps, int) or substeps < 1:
            raise InputError(f"`substeps` must be a positive integer, got {substeps!r}.")
        if not isinstance(num_steps, int) or num_steps < 0:
            raise InputError(f"`num_steps` must be a non-negative integer, got {num_steps!r}.")
        flow = eqx.tree_at(lambda f: f.lookahead, self, self.h / substeps, is_leaf=_is_none)
        return _integrate(flow, y0, num_steps, args, substeps)


def _is_none(x) -> bool:
    return x is None


@eqx.filter_jit
def _integrate(flow, y0, num_steps, args, substeps):
    ts = flow.h * jnp.arange(num_steps + 1)
    y0, static = split(y0)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_OnArrays(flow, static)),
        diffrax.Euler(),
        t0=0.0,
        t1=ts[-1],
        dt0=flow.h / substeps,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=num_steps * substeps + 1,
    )
    quantities = jax.lax.map(lambda y: flow.quantities(eqx.combine(y, static), args), solution.ys)
    return eqx.combine(solution.ys, static), quantities
