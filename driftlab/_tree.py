"""Small PyTree helpers shared across driftlab."""

import jax.numpy as jnp
import jax.tree_util as jtu


def tree_sub(x, y):
    return jtu.tree_map(lambda a, b: a - b, x, y)


def tree_add(x, y):
    return jtu.tree_map(lambda a, b: a + b, x, y)


def tree_scale(a, x):
    return jtu.tree_map(lambda xi: a * xi, x)


def tree_vdot(x, y):
    """The real inner product of two PyTrees of the same structure."""
    return sum(jnp.vdot(a, b).real for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y)))


def tree_norm(x):
    """The Euclidean norm of a PyTree, taken over all its leaves (complex allowed)."""
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jtu.tree_leaves(x)))
