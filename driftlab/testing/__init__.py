"""Hypothesis strategies and assertions for property-testing backward-error derivations.

`import driftlab.testing` needs the `test` extra (hypothesis); `import driftlab`
does not import this subpackage.
"""

try:
    import hypothesis as _hypothesis  # noqa: F401
except ImportError as error:
    raise ImportError(
        "driftlab.testing needs hypothesis, which is not installed; install the test "
        "extra: `pip install 'driftlab[test]'` (or `pip install hypothesis`)."
    ) from error

from ._assertions import (
    assert_coefficients_match as assert_coefficients_match,
    assert_gradient_field as assert_gradient_field,
    assert_modified_loss as assert_modified_loss,
    assert_order as assert_order,
    DEFAULT_HS as DEFAULT_HS,
    taylor_coefficients_in_h as taylor_coefficients_in_h,
)
from ._strategies import (
    batch_orders as batch_orders,
    batch_partitions as batch_partitions,
    bilinear_games as bilinear_games,
    curvature as curvature,
    GAME_LOSSES as GAME_LOSSES,
    GD_STABILITY_EDGE as GD_STABILITY_EDGE,
    mlp_problems as mlp_problems,
    pytree_states as pytree_states,
    quadratic_games as quadratic_games,
    quadratic_problems as quadratic_problems,
    step_size_grids as step_size_grids,
    step_sizes as step_sizes,
)
