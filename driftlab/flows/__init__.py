"""Vector fields `flow(t, y, args)`: gradient flow, IGR, and the modified flows of BEA."""

from ._base import AbstractFlow as AbstractFlow
from ._gradient import (
    GradientFlow as GradientFlow,
    hessian_gradient_product as hessian_gradient_product,
    IGRFlow as IGRFlow,
)
