"""driftlab: discretisation drift of optimisers and the modified flows that follow them.

Importing driftlab enables float64 in JAX (`jax_enable_x64`): order-of-accuracy
work is meaningless in float32.
"""

import jax


jax.config.update("jax_enable_x64", True)

from . import (
    analysis as analysis,
    flows as flows,
    integrators as integrators,
    optim as optim,
    problems as problems,
)
from ._errors import (
    DivergenceError as DivergenceError,
    DriftlabError as DriftlabError,
    InputError as InputError,
    MeasurementError as MeasurementError,
    RoundoffWarning as RoundoffWarning,
    StabilityWarning as StabilityWarning,
)
from .analysis import (
    drift as drift,
    global_error as global_error,
    GradientStructure as GradientStructure,
    hessian_eigenpairs as hessian_eigenpairs,
    is_gradient_field as is_gradient_field,
    lambda_max as lambda_max,
    local_error as local_error,
    order_of_accuracy as order_of_accuracy,
    OrderEstimate as OrderEstimate,
    stability_index as stability_index,
    weak_error as weak_error,
    weak_order_of_accuracy as weak_order_of_accuracy,
    WeakOrderEstimate as WeakOrderEstimate,
)
from .flows import (
    AbstractFlow as AbstractFlow,
    AbstractSeriesFlow as AbstractSeriesFlow,
    AdamFlow as AdamFlow,
    AlternatingGameFlow as AlternatingGameFlow,
    CentralFlow as CentralFlow,
    CorrectedField as CorrectedField,
    DrivenStepMap as DrivenStepMap,
    ExactBatchSGDFlow as ExactBatchSGDFlow,
    GradientFlow as GradientFlow,
    HeavyBallFlow as HeavyBallFlow,
    igr_loss as igr_loss,
    IGRFlow as IGRFlow,
    ModifiedFlow as ModifiedFlow,
    PrincipalFlow as PrincipalFlow,
    RMSPropCentralFlow as RMSPropCentralFlow,
    RMSPropFlow as RMSPropFlow,
    sgd_loss as sgd_loss,
    SGDFlow as SGDFlow,
    SimultaneousGameFlow as SimultaneousGameFlow,
    StochasticModifiedEquation as StochasticModifiedEquation,
)
from .integrators import (
    AbstractEulerStepMap as AbstractEulerStepMap,
    AbstractStepMap as AbstractStepMap,
    Adam as Adam,
    AlternatingGD as AlternatingGD,
    ExplicitEuler as ExplicitEuler,
    GradientDescent as GradientDescent,
    HeavyBall as HeavyBall,
    iterate as iterate,
    Nesterov as Nesterov,
    OptaxStepMap as OptaxStepMap,
    OrderAveragedSGDEpoch as OrderAveragedSGDEpoch,
    RandomBatchSGD as RandomBatchSGD,
    RMSProp as RMSProp,
    SGD as SGD,
    SGDEpoch as SGDEpoch,
    SimultaneousGD as SimultaneousGD,
    solve as solve,
)


__version__ = "0.1.0"
