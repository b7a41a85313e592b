"""Small PyTree helpers shared across driftlab.

A parameter PyTree may be a model: an `eqx.Module` whose leaves include
non-array objects (an `eqx.nn.MLP` holds its activation function). Its array
leaves are the numbers driftlab moves and differentiates; every other leaf is
static and carried unchanged (equinox's filtering convention). Gradients,
fields and differences of such a tree have its structure with `None` at the
static leaves, as `eqx.filter_grad` returns them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree


def split(tree):
    """`(arrays, static)`: the array leaves (the rest `None`) and the static leaves."""
    return eqx.partition(tree, eqx.is_array)


def array_leaves(tree) -> list:
    """The array leaves of `tree` (the ones driftlab moves and differentiates).

    Shape-only stand-ins (`jax.ShapeDtypeStruct`, from `eqx.filter_eval_shape`) count
    as arrays, so that structure and dtype checks see an abstract output whole.
    """
    return [
        leaf
        for leaf in jtu.tree_leaves(tree)
        if eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)
    ]


def ravel(tree):
    """`jax.flatten_util.ravel_pytree` over the array leaves only.

    The returned `unravel` puts the static leaves back, so it rebuilds a whole
    model from a flat vector.
    """
    arrays, static = split(tree)
    flat, unravel_arrays = ravel_pytree(arrays)
    # A `Partial` (not a closure) hashes by value, so jitted callers that take it as an
    # argument hit their compilation cache.
    return flat, jtu.Partial(_unravel, unravel_arrays, static)


def _unravel(unravel_arrays, static, vector):
    return eqx.combine(unravel_arrays(vector), static)


def grad(loss, params, args):
    r"""$\nabla L$ with respect to the array leaves of `params` (`None` at the static ones)."""
    arrays, static = split(params)
    return jax.grad(lambda a: loss(eqx.combine(a, static), args))(arrays)


def gradient_function(loss, params, args):
    """`(arrays, grad_fn)`: the array part of `params` and its gradient as a function of it.

    For forward-over-reverse products (`jax.jvp(grad_fn, (arrays,), (v,))`) on any model.
    """
    arrays, static = split(params)
    return arrays, lambda a: jax.grad(lambda b: loss(eqx.combine(b, static), args))(a)


def zeros_like(tree):
    """`tree` with zeros at its array leaves and its static leaves kept (a whole model)."""
    arrays, static = split(tree)
    return eqx.combine(jtu.tree_map(jnp.zeros_like, arrays), static)


def tree_axpy(a, x, y):
    """`a * x + y` leaf by leaf; where `x` is `None` (a static leaf), `y`'s leaf is kept."""
    return jtu.tree_map(
        lambda xi, yi: yi if xi is None else a * xi + yi, x, y, is_leaf=lambda v: v is None
    )


def tree_sub(x, y):
    return jtu.tree_map(lambda a, b: a - b, split(x)[0], split(y)[0])


def tree_add(x, y):
    return jtu.tree_map(lambda a, b: a + b, split(x)[0], split(y)[0])


def tree_scale(a, x):
    return jtu.tree_map(lambda xi: a * xi, split(x)[0])


def tree_vdot(x, y):
    """The real inner product of two PyTrees of the same structure (array leaves only)."""
    return sum(jnp.vdot(a, b).real for a, b in zip(array_leaves(x), array_leaves(y)))


def tree_norm(x):
    """The Euclidean norm of a PyTree, taken over its array leaves (complex allowed)."""
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in array_leaves(x)))
