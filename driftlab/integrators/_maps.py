"""Optimisers as one-step maps `y_{n+1} = Phi_h(y_n)`."""

import abc
import itertools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Float

from .._custom_types import Args, RealScalarLike, Scalar, Y
from .._errors import check_factory
from .._tree import grad as _grad, split, tree_axpy as _axpy
from ._optax import check_update


Loss = Callable[[Y, Args], Scalar]


def _negative_gradient(loss: Loss, params: Y, batch: Args) -> Y:
    return jtu.tree_map(jnp.negative, _grad(loss, params, batch))


def _zeros_like(params: Y) -> Y:
    """Zeros over the array leaves of `params` (`None` at a model's static leaves)."""
    return jtu.tree_map(jnp.zeros_like, split(params)[0])


class AbstractStepMap(eqx.Module):
    r"""A one-step map $y_{n+1} = \Phi_h(y_n)$: one update of an optimiser.

    Subclass it and implement `__call__(y, h, args)`. The step size `h` is an
    explicit argument, never a field, because backward error analysis
    differentiates with respect to it. `args` carries the data (a batch, a stack
    of batches) and is passed to the loss as `loss(params, args)`.

    Maps whose state holds more than the parameters (momentum buffers, Adam
    moments) keep it in `y` and say how to find the parameters with
    `parameters` / `with_parameters`, and how to start with `init`. One call
    advances flow time by `duration(h, args)`: `h` for one step, `m h` for an
    epoch of `m` steps.
    """

    @abc.abstractmethod
    def __call__(self, y: Y, h: RealScalarLike, args: Args) -> Y:
        """**Arguments:** `y` the state, `h` the step size, `args` the data.

        **Returns:** the next state, with the PyTree structure of `y`.
        """

    def init(self, params: Y, args: Args = None) -> Y:
        """The initial state for `params` (the parameters themselves, unless the map has state)."""
        del args
        return params

    def parameters(self, y: Y) -> Y:
        """The parameters held in the state `y`."""
        return y

    def with_parameters(self, y: Y, params: Y) -> Y:
        """The state `y` with its parameters replaced by `params`."""
        del y
        return params

    def duration(self, h: RealScalarLike, args: Args) -> RealScalarLike:
        """The flow time that one call of the map covers: `h` for a single step."""
        del args
        return h

    def time(self, y: Y) -> RealScalarLike | None:
        r"""The continuous time $\tau = n h$ the state `y` carries, or `None` (autonomous map).

        Time-dependent maps (`driftlab.Scheduled`: a learning-rate schedule, the
        ODE-scaled bias correction of `driftlab.AdamODE`) hold $\tau$ in their state
        and advance it by `duration(h)` per call; the augmented map
        $(y, \tau) \mapsto (\Phi_h(y; \tau), \tau + h)$ is autonomous and tends to the
        identity, so it is expanded like any other, with $\tau$ among the expanded
        variables. Flows of such maps take $t = \tau$.
        """
        del y
        return None

    def with_time(self, y: Y, tau: RealScalarLike) -> Y:
        """The state `y` at time `tau` (unchanged for an autonomous map)."""
        del tau
        return y

    def kinks(self) -> tuple[float, ...]:
        r"""The times $\tau$ where a time-dependent map is not smooth in $\tau$ (none here).

        A linear warmup's end, a cosine that ends: the modified flow is piecewise
        there, and measurements that cross one warn (`driftlab.KinkWarning`).
        """
        return ()

    def check_expansion(self, params: Y, h: RealScalarLike, args: Args) -> None:
        """Raise `InputError` where the map has no series in `h` at `params`.

        `ModifiedFlow` calls it before expanding. The default checks nothing;
        maps built from parts driftlab did not write (`OptaxStepMap`) inspect them.
        """
        del params, h, args


class AbstractEulerStepMap(AbstractStepMap):
    r"""A map that is one explicit Euler step of a vector field: $\Phi_h(y) = y + h\,G(y)$.

    Subclass it and implement `euler_field(y, args)`, which returns $G(y)$;
    `__call__` follows. Knowing the form lets `ModifiedFlow` expand $G$ to order
    $p$ instead of the whole map to order $p + 1$, at order 1 reuse one
    linearisation of $G$ for every iterate (the cost of a hand-written IGR field),
    and at order 2 build every iterate from four products.
    """

    @abc.abstractmethod
    def euler_field(self, y: Y, args: Args) -> Y:
        """**Returns:** $G(y)$, with the PyTree structure of `y`."""

    def __call__(self, y: Y, h: RealScalarLike, args: Args) -> Y:
        return _axpy(h, self.euler_field(y, args), y)


class _AbstractParamsInStateMap(AbstractStepMap):
    """A map whose state is an `eqx.Module` holding the parameters in its `params` field."""

    def parameters(self, y: eqx.Module) -> Y:
        return y.params

    def with_parameters(self, y: eqx.Module, params: Y) -> eqx.Module:
        return eqx.tree_at(lambda state: state.params, y, params)


class GradientDescent(AbstractEulerStepMap):
    r"""Gradient descent, $\theta_{n+1} = \theta_n - h \nabla L(\theta_n)$.

    **Arguments:** `loss`, called as `loss(params, args)`.
    """

    loss: Loss

    def euler_field(self, y: Y, args: Args) -> Y:
        return _negative_gradient(self.loss, y, args)


class SGD(AbstractEulerStepMap):
    r"""One minibatch step $\theta_{n+1} = \theta_n - h \nabla L_{B}(\theta_n)$.

    The batch `B` is `args`; use `SGDEpoch` for a sequence of batches.
    """

    loss: Loss

    def euler_field(self, y: Y, args: Args) -> Y:
        return _negative_gradient(self.loss, y, args)


def num_batches(batches: Args) -> int:
    """The number of batches in a stack: the leading axis of every leaf."""
    leaves = jtu.tree_leaves(batches)
    if not leaves:
        raise ValueError("`args` must be a stack of batches with a leading batch axis.")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "`args` must be a stack of batches: every leaf needs the same leading "
            f"(batch-index) axis, got leading sizes {sizes}."
        )
    return sizes.pop()


class SGDEpoch(AbstractStepMap):
    r"""One epoch of SGD: $m$ minibatch steps with the batches in the order given.

    $\theta \mapsto \phi_m \circ \cdots \circ \phi_1(\theta)$ with
    $\phi_k(\theta) = \theta - h \nabla L_k(\theta)$, where batch $k$ is
    `args[k]` (every leaf of `args` has a leading batch-index axis; permute
    that axis to change the order). One epoch covers flow time $m h$, the
    convention of Smith, Dherin, Barrett & De (2021).
    """

    loss: Loss

    def __call__(self, y: Y, h: RealScalarLike, args: Args) -> Y:
        num_batches(args)

        arrays, static = split(y)

        def minibatch_step(arrays, batch):
            return split(SGD(self.loss)(eqx.combine(arrays, static), h, batch))[0], None

        return eqx.combine(jax.lax.scan(minibatch_step, arrays, args)[0], static)

    def duration(self, h: RealScalarLike, args: Args) -> RealScalarLike:
        return h * num_batches(args)


class OrderAveragedSGDEpoch(AbstractStepMap):
    r"""The mean of `SGDEpoch` over every order of the batches.

    $$\Phi_h(\theta) = \frac1{m!}\sum_{\sigma} \phi_{\sigma(m)} \circ \cdots \circ
    \phi_{\sigma(1)}(\theta),$$

    the expectation over random batch orders whose modified flow Smith, Dherin,
    Barrett & De (2021) derive (`driftlab.SGDFlow`). Costs $m!$ epochs per call:
    meant for verification with a handful of batches. One call covers flow time
    $m h$.
    """

    loss: Loss

    def __call__(self, y: Y, h: RealScalarLike, args: Args) -> Y:
        epoch = SGDEpoch(self.loss)
        orders = list(itertools.permutations(range(num_batches(args))))
        results = [
            split(epoch(y, h, jtu.tree_map(lambda leaf: leaf[np.array(order)], args)))[0]
            for order in orders
        ]
        mean = jtu.tree_map(lambda *leaves: sum(leaves) / len(orders), *results)
        return eqx.combine(mean, split(y)[1])

    def duration(self, h: RealScalarLike, args: Args) -> RealScalarLike:
        return h * num_batches(args)


class MomentumState(eqx.Module):
    """State of `HeavyBall` and `Nesterov`: the parameters and the momentum buffer."""

    params: Y
    momentum: Y


class HeavyBall(_AbstractParamsInStateMap):
    r"""Heavy-ball momentum (Polyak), in optax's form.

    $$m_{n+1} = \beta m_n + \nabla L(\theta_n), \qquad \theta_{n+1} = \theta_n - h m_{n+1},$$

    equivalently $\theta_{n+1} = \theta_n - h\nabla L(\theta_n) + \beta(\theta_n - \theta_{n-1})$.
    The state is a `MomentumState`; `init` starts the buffer at zero. The
    effective learning rate is $h / (1 - \beta)$.
    """

    loss: Loss
    beta: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        if not 0 <= float(self.beta) < 1:
            raise ValueError(f"`beta` must lie in [0, 1), got {float(self.beta)}.")

    def __call__(self, y: MomentumState, h: RealScalarLike, args: Args) -> MomentumState:
        momentum = _axpy(self.beta, y.momentum, _grad(self.loss, y.params, args))
        return MomentumState(_axpy(-h, momentum, y.params), momentum)

    def init(self, params: Y, args: Args = None) -> MomentumState:
        del args
        return MomentumState(params, _zeros_like(params))


class Nesterov(_AbstractParamsInStateMap):
    r"""Nesterov momentum, in optax's (Sutskever et al.) form.

    $$m_{n+1} = \beta m_n + \nabla L(\theta_n), \qquad
    \theta_{n+1} = \theta_n - h\,(\nabla L(\theta_n) + \beta m_{n+1}).$$
    """

    loss: Loss
    beta: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        if not 0 <= float(self.beta) < 1:
            raise ValueError(f"`beta` must lie in [0, 1), got {float(self.beta)}.")

    def __call__(self, y: MomentumState, h: RealScalarLike, args: Args) -> MomentumState:
        grad = _grad(self.loss, y.params, args)
        momentum = _axpy(self.beta, y.momentum, grad)
        return MomentumState(_axpy(-h, _axpy(self.beta, momentum, grad), y.params), momentum)

    def init(self, params: Y, args: Args = None) -> MomentumState:
        del args
        return MomentumState(params, _zeros_like(params))


def _preconditioned(nu, eps, eps_inside_sqrt: bool):
    """`sqrt(nu + eps)` or `sqrt(nu) + eps`: the two conventions papers use."""
    if eps_inside_sqrt:
        return jnp.sqrt(nu + eps)
    return jnp.sqrt(nu) + eps


class AdamState(eqx.Module):
    """State of `Adam`: parameters, first and second moments, and the step count.

    `count` is `None` when bias correction is off (the map is then autonomous,
    which backward error analysis needs).
    """

    params: Y
    mu: Y
    nu: Y
    count: Float[Array, ""] | None


class Adam(_AbstractParamsInStateMap):
    r"""Adam (Kingma & Ba 2015), matching `optax.adam` by default.

    $$m' = \beta_1 m + (1-\beta_1) g,\quad v' = \beta_2 v + (1-\beta_2) g^2,\quad
    \theta' = \theta - h\,\frac{\hat m}{\sqrt{\hat v} + \epsilon},$$

    with $\hat m = m'/(1-\beta_1^{n+1})$, $\hat v = v'/(1-\beta_2^{n+1})$ when
    `bias_correction` (else $\hat m = m'$, $\hat v = v'$), and
    $\sqrt{\hat v + \epsilon}$ instead of $\sqrt{\hat v} + \epsilon$ when
    `eps_inside_sqrt` (the convention of Cattaneo, Klusowski & Shigida 2023).
    """

    loss: Loss
    b1: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    b2: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.999)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=False)
    bias_correction: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        for name in ("b1", "b2"):
            if not 0 <= float(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must lie in [0, 1), got {float(getattr(self, name))}.")
        if float(self.eps) < 0:
            raise ValueError(f"`eps` must be non-negative, got {float(self.eps)}.")

    def __call__(self, y: AdamState, h: RealScalarLike, args: Args) -> AdamState:
        grad = _grad(self.loss, y.params, args)
        mu = jtu.tree_map(lambda m, g: self.b1 * m + (1 - self.b1) * g, y.mu, grad)
        nu = jtu.tree_map(lambda v, g: self.b2 * v + (1 - self.b2) * g**2, y.nu, grad)
        if self.bias_correction:
            count = y.count + 1
            mu_hat = jtu.tree_map(lambda m: m / (1 - self.b1**count), mu)
            nu_hat = jtu.tree_map(lambda v: v / (1 - self.b2**count), nu)
        else:
            count, mu_hat, nu_hat = None, mu, nu
        direction = jtu.tree_map(
            lambda m, v: m / _preconditioned(v, self.eps, self.eps_inside_sqrt), mu_hat, nu_hat
        )
        return AdamState(_axpy(-h, direction, y.params), mu, nu, count)

    def init(self, params: Y, args: Args = None) -> AdamState:
        del args
        zeros = _zeros_like(params)
        count = jnp.zeros((), jnp.result_type(float)) if self.bias_correction else None
        return AdamState(params, zeros, zeros, count)


class RMSPropState(eqx.Module):
    """State of `RMSProp`: the parameters and the running mean of squared gradients."""

    params: Y
    nu: Y


class RMSProp(_AbstractParamsInStateMap):
    r"""RMSProp (Tieleman & Hinton 2012), matching `optax.rmsprop` by default.

    $$v' = \rho v + (1-\rho) g^2, \qquad \theta' = \theta - h\,\frac{g}{\sqrt{v' + \epsilon}},$$

    or $g / (\sqrt{v'} + \epsilon)$ when `eps_inside_sqrt=False`.
    """

    loss: Loss
    rho: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.9)
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    eps_inside_sqrt: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not 0 <= float(self.rho) < 1:
            raise ValueError(f"`rho` must lie in [0, 1), got {float(self.rho)}.")
        if float(self.eps) < 0:
            raise ValueError(f"`eps` must be non-negative, got {float(self.eps)}.")

    def __call__(self, y: RMSPropState, h: RealScalarLike, args: Args) -> RMSPropState:
        grad = _grad(self.loss, y.params, args)
        nu = jtu.tree_map(lambda v, g: self.rho * v + (1 - self.rho) * g**2, y.nu, grad)
        direction = jtu.tree_map(
            lambda g, v: g / _preconditioned(v, self.eps, self.eps_inside_sqrt), grad, nu
        )
        return RMSPropState(_axpy(-h, direction, y.params), nu)

    def init(self, params: Y, args: Args = None) -> RMSPropState:
        del args
        return RMSPropState(params, _zeros_like(params))


class SimultaneousGD(AbstractEulerStepMap):
    r"""Simultaneous gradient descent in a two-player game (Rosca et al. 2021).

    The state is a pair `(phi, theta)`; player one minimises `loss_phi`, player
    two `loss_theta`, both called as `loss((phi, theta), args)`:

    $$\phi' = \phi - \alpha h \nabla_\phi L_1(\phi, \theta), \qquad
    \theta' = \theta - \lambda h \nabla_\theta L_2(\phi, \theta).$$

    `alpha` and `lam` are the players' step sizes as multiples of `h`.
    """

    loss_phi: Loss
    loss_theta: Loss
    alpha: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    lam: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def euler_field(self, y: tuple[Y, Y], args: Args) -> tuple[Y, Y]:
        grad_phi = _grad(self.loss_phi, y, args)[0]
        grad_theta = _grad(self.loss_theta, y, args)[1]
        return (
            jtu.tree_map(lambda g: -self.alpha * g, grad_phi),
            jtu.tree_map(lambda g: -self.lam * g, grad_theta),
        )


class AlternatingGD(AbstractStepMap):
    r"""Alternating gradient descent in a two-player game (Rosca et al. 2021).

    Player one moves first; player two uses its new parameters:

    $$\phi' = \phi - \alpha h \nabla_\phi L_1(\phi, \theta), \qquad
    \theta' = \theta - \lambda h \nabla_\theta L_2(\phi', \theta).$$
    """

    loss_phi: Loss
    loss_theta: Loss
    alpha: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)
    lam: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def __call__(self, y: tuple[Y, Y], h: RealScalarLike, args: Args) -> tuple[Y, Y]:
        phi, theta = y
        phi = _axpy(-self.alpha * h, _grad(self.loss_phi, (phi, theta), args)[0], phi)
        grad_theta = _grad(self.loss_theta, (phi, theta), args)[1]
        return phi, _axpy(-self.lam * h, grad_theta, theta)


class ExplicitEuler(AbstractEulerStepMap):
    r"""Explicit Euler for an ODE $\dot y = f(y)$: $y_{n+1} = y_n + h f(y_n)$.

    `vector_field` is called as `vector_field(y, args)`. Its modified equation
    is the textbook case of Hairer, Lubich & Wanner, *Geometric Numerical
    Integration*, ch. IX.1.
    """

    vector_field: Callable[[Y, Args], Y]

    def euler_field(self, y: Y, args: Args) -> Y:
        return self.vector_field(y, args)


class OptaxState(eqx.Module):
    """State of `OptaxStepMap`: the parameters and the optax optimiser state."""

    params: Y
    opt_state: optax.OptState


class OptaxStepMap(_AbstractParamsInStateMap):
    r"""Any optax `GradientTransformation` as a step map.

    `make_optimiser(h)` builds the transformation for step size `h` (for
    example `lambda h: optax.adam(h)`), so that `h` stays an explicit,
    differentiable argument. One call applies one update to the gradient of
    `loss(params, args)`.

    **Backward error analysis** (`driftlab.ModifiedFlow`) takes any
    transformation that is smooth and autonomous; the moments of `adam`,
    `adamw`, `nadam`, `adabelief`, `rmsprop` and momentum are auxiliary state
    with a slow manifold. **Step counters** (integer leaves of the optax state,
    and float scalars updated as `count + 1`) are carried, never expanded. A
    counter may reach the update only through a bias correction
    $1/(1 - b^n)$, $0 \le b < 1$: at time $t = n h$,

    $$\frac{1}{1 - b^{n}} - 1 = \frac{b^{t/h}}{1 - b^{t/h}} = O\big(e^{-t|\log b|/h}\big),$$

    which vanishes faster than any power of $h$ at fixed $t > 0$, so it has no
    term in the modified series: the modified flow of bias-corrected Adam, after
    its burn-in ($b_2^n$ negligible, a few hundred steps at $b_2 = 0.99$), is that
    of uncorrected Adam. The expansion holds every counter at
    $n = 2^{30}$, where $b^n = 0$ exactly in float64 for $b < 1 - 10^{-6}$, and
    `slow_state` returns that burned-in count. Smooth terms that do not involve
    the counter, such as `adamw`'s weight decay $-h\lambda\theta$, are expanded
    like the rest of the update.

    Before any number is computed, `check_expansion` (called by `ModifiedFlow`)
    raises `driftlab.InputError` naming the primitive and the transformation's
    line for: a non-smooth update (`sign` in `lion`, `max`/`abs` in `adamax`,
    an active `clip_by_global_norm`); an accumulator that does not decay
    (`adagrad`: eigenvalue 1, no slow manifold); a counter that reaches the
    update other than through a decaying power (a learning-rate schedule in steps:
    a time-dependent step; state it in time instead, with `driftlab.Scheduled` and
    `driftlab.OptaxSchedule`). The docs' optax page lists the common optimisers.
    """

    loss: Loss
    make_optimiser: Callable[[RealScalarLike], optax.GradientTransformation]

    def __check_init__(self):
        check_factory(
            self.make_optimiser,
            "make_optimiser",
            optax.GradientTransformation,
            "lambda h: optax.adam(h)",
        )

    def __call__(self, y: OptaxState, h: RealScalarLike, args: Args) -> OptaxState:
        optimiser = self.make_optimiser(h)
        grad = _grad(self.loss, y.params, args)
        updates, opt_state = optimiser.update(grad, y.opt_state, split(y.params)[0])
        return OptaxState(eqx.apply_updates(y.params, updates), opt_state)

    def init(self, params: Y, args: Args = None) -> OptaxState:
        del args
        return OptaxState(params, self.make_optimiser(1.0).init(split(params)[0]))

    def check_expansion(self, params: Y, h: RealScalarLike, args: Args) -> None:
        """Raise `InputError` where the transformation has no modified flow at `params`.

        Reads the jaxpr of `make_optimiser(h).update` at the gradient of
        `params` and the initial optax state (see above and the docs' optax page).
        """
        arrays = split(params)[0]
        grads = _grad(self.loss, params, args)
        check_update(self.make_optimiser(h), grads, self.init(params, args).opt_state, arrays)
