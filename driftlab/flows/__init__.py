"""Vector fields `flow(t, y, args)`: gradient flow, IGR, and the modified flows of BEA."""

from ._adaptive import AdamFlow as AdamFlow, RMSPropFlow as RMSPropFlow
from ._base import AbstractFlow as AbstractFlow, AbstractSeriesFlow as AbstractSeriesFlow
from ._cancellation import (
    CorrectedField as CorrectedField,
    default_target as default_target,
    drive as drive,
    DrivenStepMap as DrivenStepMap,
    velocity_scale as velocity_scale,
)
from ._central import (
    CentralFlow as CentralFlow,
    CentralQuantities as CentralQuantities,
    RMSPropCentralFlow as RMSPropCentralFlow,
)
from ._games import (
    AlternatingGameFlow as AlternatingGameFlow,
    SimultaneousGameFlow as SimultaneousGameFlow,
)
from ._gradient import (
    GradientFlow as GradientFlow,
    hessian_gradient_product as hessian_gradient_product,
    IGRFlow as IGRFlow,
)
from ._losses import (
    igr_loss as igr_loss,
    sgd_loss as sgd_loss,
    sgd_regulariser as sgd_regulariser,
    sgd_variance_regulariser as sgd_variance_regulariser,
    sgd_without_replacement_loss as sgd_without_replacement_loss,
)
from ._modified import ModifiedFlow as ModifiedFlow
from ._momentum import (
    heavy_ball_slow_field_matrix as heavy_ball_slow_field_matrix,
    HeavyBallFlow as HeavyBallFlow,
)
from ._principal import PrincipalFlow as PrincipalFlow
from ._sgd import ExactBatchSGDFlow as ExactBatchSGDFlow, SGDFlow as SGDFlow
from ._sme import (
    AbstractStochasticModifiedEquation as AbstractStochasticModifiedEquation,
    AdamSME as AdamSME,
    MomentumSME as MomentumSME,
    RMSPropSME as RMSPropSME,
    StochasticModifiedEquation as StochasticModifiedEquation,
)
from ._without_replacement import (
    covariance_weights as covariance_weights,
    sgd_without_replacement_correction as sgd_without_replacement_correction,
    sgd_without_replacement_regulariser as sgd_without_replacement_regulariser,
)
