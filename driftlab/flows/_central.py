"""Central flows of GD and RMSProp at the edge of stability (Cohen, Damian et al. 2025)."""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from equinox import AbstractVar
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_float64_tree, InputError
from .._lanczos import eigsh, warm_eigsh
from .._tree import grad as tree_grad, ravel, split
from ..integrators._maps import _preconditioned, RMSPropState
from ._base import AbstractFlow
from ._sdcp import pair_indices, smat, solve_sdcp, svec


Loss = Callable[[Y, Args], Scalar]


class CentralQuantities(eqx.Module):
    r"""What the central flow solves for at one point $w$ (for plots and checks).

    **Attributes:**

    - `eigenvalues`: the top-`k` Hessian eigenvalues $\lambda_i$ (Ritz values), ascending
      (for RMSProp those of the preconditioned Hessian $P^{-1/2}HP^{-1/2}$).
    - `eigenvectors`: the matching unit vectors $u_i$ (ravelled, as columns; for RMSProp
      $u_i = P^{-1/2}v_i$, with $U^\top PU = I$).
    - `X`: the $k\times k$ matrix $X\succeq 0$; $\Sigma = UXU^\top$ is the covariance
      of GD's oscillation that the flow accounts for. Zero below the edge of stability.
    - `predicted_S`: $S(\text{next}) = \tfrac2h I - U^\top HU$ one lookahead later,
      $\succeq 0$ and complementary to `X`.
    - `loss`: $L(w)$; `predicted_loss`: $L(w) + \tfrac12\langle H, \Sigma\rangle$,
      the central flow's prediction of GD's time-averaged loss.
    - `velocity`: the field (ravelled state: $\dot w$; for RMSProp $\dot w$ then $\dot\nu$).
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


def pair_products(vectors: Array) -> Array:
    r"""The rows $c_{ij}\,u_i\odot u_j$, $i \le j$, in `svec` order (as `third_derivative_rows`).

    `pairs.T @ svec(X)` is $\operatorname{diag}(UXU^\top)$, and `pairs @ a` is
    `svec` of $U^\top\operatorname{diag}(a)\,U$.
    """
    i, j = pair_indices(vectors.shape[1])
    rows = vectors.T[i] * vectors.T[j]
    return rows * jnp.where(i == j, 1.0, jnp.sqrt(2.0))[:, None]


def _flat_problem(loss: Loss, params: Y, args: Args):
    """`(w, L(w), grad L(w), grad_flat)` on the ravelled array leaves of `params`."""
    w, unravel = ravel(params)
    loss_flat = lambda x: loss(unravel(x), args)
    grad_flat = lambda x: ravel_pytree(tree_grad(loss, unravel(x), args))[0]
    value, grad = jax.value_and_grad(loss_flat)(w)
    return w, value, grad, grad_flat


#: Eigenvectors tracked below the top `k` in warm starts: an eigenvalue crossing into the
#: top `k` from the guards is found without a cold solve.
GUARDS = 1
#: The relative Ritz residual of the cold solves (`quantities`, `warm_start=False`).
EIGEN_TOL = 1e-10
#: The relative Ritz residual of the warm solves in `integrate`: eigenvalues to about
#: its square, eigenvectors to it over the relative gap; the trajectory moves by 2e-13
#: relative against cold solves over the authors' example (`central_flow_cost.py`).
WARM_TOL = 1e-6


def _top_space(
    grad_flat,
    w: Array,
    scale: Array | None,
    k: int,
    num_iterations: int | None,
    start: Array | None = None,
):
    r"""The top-`k` eigenpairs of $DHD$, $D = \operatorname{diag}(\text{scale})$ (or $H$).

    Lanczos on Hessian-vector products: from a fixed random start (cold), or, given a
    warm `start` (see `_warm_start`), `driftlab._lanczos.warm_eigsh` with a cold
    fallback. **Returns:** `(values, U, products, kept)` with $U = DV$ for the unit Ritz
    vectors $V$ of $DHD$, so that $U^\top D^{-2} U = I$ and
    $HU = D^{-2} U\,\mathrm{diag}(\text{values})$; `kept` (warm only, else `None`): the
    top `k + GUARDS` Ritz vectors of $DHD$, for the next start.
    """
    hvp = lambda v: jax.jvp(grad_flat, (w,), (v,))[1]
    if scale is not None:
        hvp_h = hvp
        hvp = lambda v: scale * hvp_h(scale * v)
    k = min(k, w.size)
    cap = min(num_iterations or k + 40, w.size)
    cold_start = jr.normal(jr.key(0), w.shape, w.dtype)
    if start is None:
        values, vectors, _, products = eigsh(hvp, cold_start, k, max_iterations=cap, tol=EIGEN_TOL)
        kept = None
    else:
        values, vectors, kept, _, products, _ = warm_eigsh(
            hvp,
            start,
            cold_start,
            k,
            num_kept=min(k + GUARDS, w.size),
            max_iterations=cap,
            cold_iterations=cap,
            tol=WARM_TOL,
        )
    if scale is not None:
        vectors = scale[:, None] * vectors
    return values, vectors, products, kept


def _warm_start(history: Array, count: Array) -> Array:
    r"""The start of the next warm solve: the tracked vectors' sums, extrapolated in time.

    `history[j]` is $s_{n-j} = \sum_i \pm y_i$ over the `k + GUARDS` Ritz vectors kept at
    substep $n - j$ (signs aligned, see `_push`); the quadratic extrapolation
    $3s_n - 3s_{n-1} + s_{n-2}$ leaves an $O(\tau^3)$ error where $s_n$ alone leaves
    $O(\tau)$, which halves the products per solve (measured on the authors' example).
    With fewer than three sums kept (`count`), a lower order; with none, zero (a cold solve).
    """
    weights = jnp.select(
        [count >= 3, count == 2, count == 1],
        [jnp.array([3.0, -3.0, 1.0]), jnp.array([2.0, -1.0, 0.0]), jnp.array([1.0, 0.0, 0.0])],
        jnp.zeros(3),
    )
    return weights @ history


def _push(history: Array, kept: Array) -> Array:
    """`history` with the sum of `kept`, each column signed to agree with the last sum.

    Aligning with the last *sum* (not column by column) keeps the sum continuous when
    eigenvalues cross and the columns reorder.
    """
    signs = jnp.where(history[0] @ kept >= 0, 1.0, -1.0)
    return jnp.concatenate([(kept @ signs)[None], history[:-1]])


def _solve_x(q: Array, c: Array, k: int, name: str) -> Array:
    x = solve_sdcp(q, c, k)
    return eqx.error_if(
        x,
        ~jnp.all(jnp.isfinite(x)),
        f"{name}: the sharpness exceeds 2/h and no X >= 0 can bring it back "
        "(the third derivative along the top eigenvectors vanishes, e.g. a quadratic "
        "loss): there is no central flow here, and the optimiser diverges.",
    )


def _optional_array(x):
    # An array, not a Python float, so that jitted callers trace it instead of recompiling.
    return None if x is None else jnp.asarray(x)


class AbstractCentralFlow(AbstractFlow):
    """A central flow: the field, predicted loss and integration from `quantities`."""

    loss: AbstractVar[Loss]
    k: AbstractVar[int]
    lookahead: AbstractVar[Float[Array, ""] | None]
    num_iterations: AbstractVar[int | None]
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

    @abc.abstractmethod
    def _solve(self, y: Y, args: Args, start: Array | None) -> tuple[CentralQuantities, Array]:
        """`quantities` at `y`, the eigenpairs warm-started from `start` (`None`: cold),
        and the Ritz vectors kept for the next start (`None` when cold)."""

    @abc.abstractmethod
    def _parameters(self, y: Y) -> Y:
        """The part of the state `y` whose Hessian (or preconditioned Hessian) is solved."""

    def quantities(self, y: Y, args: Args) -> CentralQuantities:
        r"""What the flow solves for at `y` (`CentralQuantities`): `X`, the top eigenpairs,
        $S_+$, the loss, the predicted loss and the velocity. The eigenpairs are solved cold."""
        return self._solve(y, args, None)[0]

    def __call__(self, t: RealScalarLike, y: Y, args: Args) -> Y:
        del t
        _, unravel = ravel_pytree(split(y)[0])
        return unravel(self.quantities(y, args).velocity)

    def predicted_loss(self, y: Y, args: Args) -> Scalar:
        r"""The predicted time-averaged loss, $L(w) + \tfrac12\langle\nabla^2L(w), \Sigma\rangle$.

        Not a modified loss: the field is not its gradient.
        """
        return self.quantities(y, args).predicted_loss

    def integrate(
        self,
        y0: Y,
        num_steps: int,
        args: Args = None,
        *,
        substeps: int = 4,
        warm_start: bool = True,
    ) -> tuple[Y, CentralQuantities]:
        r"""The flow over `num_steps` optimiser steps, by Euler with step $\tau = h/$`substeps`.

        Explicit Euler with constant steps, $y \leftarrow y + \tau f(y)$, and the
        lookahead set to the step: the authors' position-level scheme. The state is saved
        at every step, $t = nh$, with the quantities of the substep that starts there
        (no field evaluation is repeated).

        **Warm starts.** With `warm_start` (the default) each substep's eigensolve starts
        from the top `k` + `GUARDS` Ritz vectors of the substeps before, extrapolated in
        time (`driftlab._lanczos.warm_eigsh`; it falls back to a cold solve when its
        residual test fails). Warm solves stop at relative residual `WARM_TOL` (1e-6;
        eigenvalues to about its square, eigenvectors to it over the relative gap), cold
        ones at 1e-10: on the authors' 1000-step example the trajectories agree to 2e-13
        relative, and the warm one spends 38 Hessian-vector products per GD step against
        106 (`benchmarks/central_flow_cost.py`). `warm_start=False` solves every substep cold.

        **Returns:** `(ys, quantities)`: the states at $t = 0, h, \dots$, stacked, and the
        `CentralQuantities` at each of them (stacked); there, `lanczos_products` counts
        the products of *all* the substeps of the step that starts at that point (the
        last point: its own solve).
        """
        if not isinstance(substeps, int) or substeps < 1:
            raise InputError(f"`substeps` must be a positive integer, got {substeps!r}.")
        if not isinstance(num_steps, int) or num_steps < 0:
            raise InputError(f"`num_steps` must be a non-negative integer, got {num_steps!r}.")
        check_float64_tree(y0, "y0")
        flow = eqx.tree_at(lambda f: f.lookahead, self, self.h / substeps, is_leaf=_is_none)
        return _integrate(flow, y0, num_steps, args, substeps, bool(warm_start))


class CentralFlow(AbstractCentralFlow):
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
    on Hessian-vector products from a fixed random start (`driftlab._lanczos`), or,
    in `integrate`, warm-started from the substeps before; the SDCP from a JAX
    solver (closed form at $k=1$; accelerated projected gradient on the PSD cone
    plus a semismooth Newton polish for $k \le 8$): everything is jittable, nothing
    goes to the host. Cost per field evaluation: one gradient, at most
    `num_iterations` Hessian-vector products (measured on the authors' example:
    26.5 cold, 9.6 warm), $k(k+1)/2$ third-derivative products (forward over forward
    over reverse).

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

    For RMSProp (a diagonal preconditioner with its own state) see
    `driftlab.RMSPropCentralFlow`; heavy-ball has no central flow here (see there).

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
    lookahead: Float[Array, ""] | None = eqx.field(default=None, converter=_optional_array)
    num_iterations: int | None = eqx.field(static=True, default=None)

    def _parameters(self, y: Y) -> Y:
        return y

    def _solve(self, y: Y, args: Args, start: Array | None) -> tuple[CentralQuantities, Array]:
        w, loss, grad, grad_flat = _flat_problem(self.loss, y, args)
        eigenvalues, vectors, products, kept = _top_space(
            grad_flat, w, None, self.k, self.num_iterations, start
        )
        k = eigenvalues.size
        rows = third_derivative_rows(grad_flat, w, vectors)
        q = 0.5 * rows @ rows.T
        c = svec(jnp.diag(2 / self.h - eigenvalues)) / self.tau + rows @ grad
        x = _solve_x(q, c, k, "CentralFlow")
        X = smat(x, k)
        return CentralQuantities(
            eigenvalues=eigenvalues,
            eigenvectors=vectors,
            X=X,
            predicted_S=self.tau * smat(q @ x + c, k),
            loss=loss,
            predicted_loss=loss + 0.5 * jnp.sum(jnp.diag(X) * eigenvalues),
            velocity=-(grad + 0.5 * rows.T @ x),
            lanczos_products=products,
        ), kept


class RMSPropCentralFlow(AbstractCentralFlow):
    r"""The central flow of RMSProp (Cohen, Damian, Talwalkar, Kolter & Lee 2025).

    For `driftlab.RMSProp`, $v' = \rho v + (1-\rho)g^2$, $w' = w - h\,g/P(v')$ with
    $P(v) = \sqrt{v + \epsilon}$ (`eps_inside_sqrt=True`) or $\sqrt v + \epsilon$,
    elementwise. RMSProp is gradient descent preconditioned by $\operatorname{diag}(P)/h$:
    it is stable while the *preconditioned sharpness*
    $\lambda_{\max}(P^{-1/2}HP^{-1/2})$ is below $2/h$, and at the edge of stability it
    oscillates along the top eigenvectors of that matrix. Its central flow models the
    time-averaged parameters $w$ *and* second moment $\nu$; in driftlab's time (one step
    takes time $h$), with $g = \nabla L(w)$, $H = \nabla^2 L(w)$, $P = P(\nu)$:

    $$\dot w = -P^{-1}\odot\Big[g + \tfrac12\nabla_w\langle H, \Sigma\rangle\Big], \qquad
    \dot\nu = \frac{1-\rho}{\rho\,h}\Big[g^{2} + \operatorname{diag}(H\Sigma H) - \nu\Big],
    \qquad \Sigma = UXU^\top,$$

    where $U = P^{-1/2}V$ holds the top-$k$ eigenvectors $V$ of $P^{-1/2}HP^{-1/2}$
    (eigenvalues $\lambda_i$): $HU = PU\Lambda$ and $U^\top PU = I$. The second
    moment sees the oscillation: GD's gradient $g + H\delta$ averages to
    $g^2 + \operatorname{diag}(H\Sigma H)$ when squared. $X \succeq 0$ keeps the
    preconditioned sharpness at $2/h$: $S = \tfrac2h U^\top PU - U^\top HU = \tfrac2h I - \Lambda$,

    $$\dot S = \tfrac2h\,U^\top\operatorname{diag}\big(P'(\nu)\odot\dot\nu\big)U
    - \big[\nabla(u_i^\top Hu_j)\cdot\dot w\big]_{ij},$$

    and $X$ solves the same complementarity problem as `driftlab.CentralFlow`,
    $X\succeq0$, $S + \tau\dot S \succeq 0$, $\langle X, S+\tau\dot S\rangle = 0$. On the
    stability boundary $Hu_i = \tfrac2h Pu_i$ for every direction $X$ acts on, so the
    flow takes $\operatorname{diag}(H\Sigma H) = \tfrac4{h^2}P^2\odot\operatorname{diag}(\Sigma)$
    (exact there; off it, each pair's term differs from the Ritz form
    $P^2\odot\operatorname{diag}(U\Lambda X\Lambda U^\top)$ by the relative gap
    $1 - h^2\lambda_i\lambda_j/4$, which the drift control keeps $O(\tau)$). With it
    $\dot S$ is affine in $X$ through a PSD map,
    $\tfrac12 G P^{-1}G^\top + \tfrac{8(1-\rho)}{\rho h^4}D\operatorname{diag}(P'P^2)D^\top$
    ($G$, $D$: the `svec`-scaled rows $\nabla(u_i^\top Hu_j)$ and $u_i\odot u_j$), so the
    SDCP stays a convex QP and the same solver serves.

    **Time scaling.** The step at $n$ divides by $v_{n+1}$, and
    $v_{n+1} - v_n = \frac{1-\rho}{\rho}\big(g_n^2 - v_{n+1}\big)$: backward Euler, one step
    per unit, of $\dot\nu = \frac{1-\rho}{\rho}(g^2-\nu)$, whose solution lags $g^2$ by
    $\rho/(1-\rho)$ steps, exactly the lag of the moving average $v_{n+1}$. So $\nu(t)$
    models the second moment the step at $t = nh$ divides by, the map's `nu` *after*
    its update (`flow_state` turns a map state into a flow state); in time $t = nh$
    the rate is $\frac{1-\rho}{\rho h}$, the authors' $\frac{1-\beta_2}{\beta_2}$ per step.

    **Limits.** Below the threshold $X = 0$: $\dot w = -g/P(\nu)$, preconditioned
    gradient flow, and on its slow manifold $\nu = g^2$ that is `driftlab.RMSPropFlow`'s
    leading term $F_0$. `rho = 1` freezes $\nu$ (preconditioned GD); with
    $P = c\,I$ the flow is `driftlab.CentralFlow` with step $h/c$, $\dot w$ divided by $c$.
    $\nu$ relaxes at rate $\frac{1-\rho}{\rho h}$, so `integrate`'s Euler steps are stable
    for $\frac{1-\rho}{\rho\,\text{substeps}} < 2$. With `eps = 0`, $\nu$ must stay positive.

    **Heavy-ball: not built.** Its threshold is $h\lambda = 2(1+\beta)$, and once the
    momentum buffer is slaved to the parameters (its memory, $1/(1-\beta)$ steps, short
    against the time the sharpness changes) the same averaging gives
    $\dot w = -\frac{1}{1-\beta}[g + \tfrac12\nabla\langle H,\Sigma\rangle]$ with that
    threshold. With the buffer kept as a state, as $\nu$ is here, the derivation does
    *not* carry over: $S$ depends on $w$ only, whose rate is the buffer, not $X$, so
    $\dot S$ does not involve $X$ and the complementarity problem would have to be posed
    on $\ddot S$. Neither form is derived or validated in the paper.

    **Arguments:**

    - `loss`: `loss(params, args)`.
    - `h`: RMSProp's step size (the threshold is $2/h$).
    - `rho`, `eps`, `eps_inside_sqrt`: as in `driftlab.RMSProp`; here $0 < \rho \le 1$.
    - `k`, `lookahead`, `num_iterations`: as in `driftlab.CentralFlow`.

    Checked against RMSProp's own iterates, averaged by a Gaussian of width 10 steps
    (`benchmarks/central_flow_sidebyside.py --optimiser rmsprop`: the authors' swish MLP,
    $h = 10^{-3}$, $\rho = 0.99$, $\epsilon = 0$, $k = 5$, 1000 steps): 4.5% from their
    average at the edge (relative to the distance travelled), predicted loss within 0.5%.
    The authors' `central_flows_jax` drives $\nu$ with $\operatorname{diag}(\Sigma)$ in
    place of $\operatorname{diag}(H\Sigma H)$; with that term swapped in, this flow matches
    theirs to 2e-5, and theirs is 18.5% from RMSProp's average (loss 27% off).

    The state is an `RMSPropState(params, nu)`. `quantities(y, args)` returns the
    preconditioned eigenvalues $\lambda_i$, $U$, `X` and the rest (`CentralQuantities`,
    with `velocity` the ravelled $(\dot w, \dot\nu)$); `predicted_loss(y, args)` is
    $L + \tfrac12\langle H, \Sigma\rangle = L + \tfrac12\sum_i\lambda_iX_{ii}$.

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
    rho: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=True)
    k: int = eqx.field(static=True, default=1)
    lookahead: Float[Array, ""] | None = eqx.field(default=None, converter=_optional_array)
    num_iterations: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not 0 < float(self.rho) <= 1:
            raise InputError(f"`rho` must lie in (0, 1], got {float(self.rho)}.")
        if not float(self.eps) >= 0:
            raise InputError(f"`eps` must be non-negative, got {float(self.eps)}.")

    def flow_state(self, state: RMSPropState, args: Args) -> RMSPropState:
        r"""The flow state of a map state $(w_n, v_n)$: $(w_n, \rho v_n + (1-\rho)g(w_n)^2)$."""
        grad = tree_grad(self.loss, state.params, args)
        nu = jax.tree.map(lambda v, g: self.rho * v + (1 - self.rho) * g**2, state.nu, grad)
        return RMSPropState(state.params, nu)

    def _parameters(self, y: RMSPropState) -> Y:
        return y.params

    def _solve(
        self, y: RMSPropState, args: Args, start: Array | None
    ) -> tuple[CentralQuantities, Array]:
        if not isinstance(y, RMSPropState):
            raise InputError(
                f"RMSPropCentralFlow's state is an `RMSPropState(params, nu)`, got "
                f"{type(y).__name__}; build one with `driftlab.RMSProp(loss).init(params)` "
                "and set `nu` (e.g. to the squared gradient), or `flow_state(map_state, args)`."
            )
        w, loss, grad, grad_flat = _flat_problem(self.loss, y.params, args)
        nu = ravel(y.nu)[0]
        precondition = lambda v: _preconditioned(v, self.eps, self.eps_inside_sqrt)
        p, dp = jax.jvp(precondition, (nu,), (jnp.ones_like(nu),))
        eigenvalues, vectors, products, kept = _top_space(
            grad_flat, w, p**-0.5, self.k, self.num_iterations, start
        )
        k = eigenvalues.size
        rows = third_derivative_rows(grad_flat, w, vectors)
        pairs = pair_products(vectors)
        rate = (1 - self.rho) / (self.rho * self.h)
        # d svec(S)/dt through the preconditioner, per unit of nu's rate: (2/h) U^T diag(P' .) U.
        through_nu = (2 / self.h) * rate * pairs * dp
        # diag(H Sigma H) on the boundary, as a linear map of svec(X).
        oscillation = (4 / self.h**2) * p**2 * pairs
        forcing = grad**2 - nu
        q = 0.5 * (rows / p) @ rows.T + through_nu @ oscillation.T
        c = (
            svec(jnp.diag(2 / self.h - eigenvalues)) / self.tau
            + rows @ (grad / p)
            + through_nu @ forcing
        )
        x = _solve_x(q, c, k, "RMSPropCentralFlow")
        X = smat(x, k)
        w_velocity = -(grad + 0.5 * rows.T @ x) / p
        nu_velocity = rate * (forcing + oscillation.T @ x)
        return CentralQuantities(
            eigenvalues=eigenvalues,
            eigenvectors=vectors,
            X=X,
            predicted_S=self.tau * smat(q @ x + c, k),
            loss=loss,
            predicted_loss=loss + 0.5 * jnp.sum(jnp.diag(X) * eigenvalues),
            velocity=jnp.concatenate([w_velocity, nu_velocity]),
            lanczos_products=products,
        ), kept


def _is_none(x) -> bool:
    return x is None


@eqx.filter_jit
def _integrate(flow, y0, num_steps, args, substeps, warm_start):
    y0, static = split(y0)
    flat0, unravel = ravel_pytree(y0)
    tau = flow.h / substeps

    def solve(y, history, count):
        start = _warm_start(history, count) if warm_start else None
        quantities, kept = flow._solve(eqx.combine(unravel(y), static), args, start)
        if warm_start:
            history, count = _push(history, kept), count + 1
        return quantities, history, count

    def substep(carry, _):
        y, history, count = carry
        quantities, history, count = solve(y, history, count)
        return (y + tau * quantities.velocity, history, count), quantities

    def step(carry, _):
        y = carry[0]
        carry, quantities = jax.lax.scan(substep, carry, length=substeps)
        # The quantities at the step's start, charged with all its substeps' products.
        at_start = jax.tree.map(lambda leaf: leaf[0], quantities)
        at_start = eqx.tree_at(
            lambda q: q.lanczos_products, at_start, jnp.sum(quantities.lanczos_products)
        )
        return carry, (y, at_start)

    # The history holds the last three sums of kept Ritz vectors (`_warm_start`), which
    # live in the parameters' space (not the whole state's); none yet.
    size = ravel(flow._parameters(eqx.combine(y0, static)))[0].size
    history = jnp.zeros((3, size), flat0.dtype)
    carry = (flat0, history, jnp.asarray(0))
    carry, (ys, quantities) = jax.lax.scan(step, carry, length=num_steps)
    last, _, _ = solve(*carry)
    ys = jnp.concatenate([ys, carry[0][None]])
    quantities = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), quantities, last)
    return eqx.combine(jax.vmap(unravel)(ys), static), quantities
