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
    CostWarning as CostWarning,
    DivergenceError as DivergenceError,
    DriftlabError as DriftlabError,
    InputError as InputError,
    MeasurementError as MeasurementError,
    RoundoffWarning as RoundoffWarning,
    StabilityWarning as StabilityWarning,
)
from .analysis import (
    batch_sharpness as batch_sharpness,
    boundary_layer as boundary_layer,
    BoundaryLayer as BoundaryLayer,
    drift as drift,
    global_error as global_error,
    GradientStructure as GradientStructure,
    hessian_eigenpairs as hessian_eigenpairs,
    is_gradient_field as is_gradient_field,
    lambda_max as lambda_max,
    local_error as local_error,
    order_of_accuracy as order_of_accuracy,
    OrderEstimate as OrderEstimate,
    scaling_rule_error as scaling_rule_error,
    stability_index as stability_index,
    weak_error as weak_error,
    weak_order_of_accuracy as weak_order_of_accuracy,
    WeakOrderEstimate as WeakOrderEstimate,
)
from .flows import (
    AbstractFlow as AbstractFlow,
    AbstractSeriesFlow as AbstractSeriesFlow,
    AbstractStochasticModifiedEquation as AbstractStochasticModifiedEquation,
    AdamFlow as AdamFlow,
    AdamSME as AdamSME,
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
    MomentumSME as MomentumSME,
    PrincipalFlow as PrincipalFlow,
    RMSPropCentralFlow as RMSPropCentralFlow,
    RMSPropFlow as RMSPropFlow,
    RMSPropSME as RMSPropSME,
    sgd_loss as sgd_loss,
    SGDFlow as SGDFlow,
    SimultaneousGameFlow as SimultaneousGameFlow,
    StochasticModifiedEquation as StochasticModifiedEquation,
)
from .integrators import (
    AbstractEulerStepMap as AbstractEulerStepMap,
    AbstractSchedule as AbstractSchedule,
    AbstractStepMap as AbstractStepMap,
    Adam as Adam,
    AdamODE as AdamODE,
    AlternatingGD as AlternatingGD,
    CosineSchedule as CosineSchedule,
    ExplicitEuler as ExplicitEuler,
    ExponentialSchedule as ExponentialSchedule,
    FunctionSchedule as FunctionSchedule,
    GradientDescent as GradientDescent,
    HeavyBall as HeavyBall,
    iterate as iterate,
    KinkWarning as KinkWarning,
    Nesterov as Nesterov,
    OptaxSchedule as OptaxSchedule,
    OptaxStepMap as OptaxStepMap,
    OrderAveragedSGDEpoch as OrderAveragedSGDEpoch,
    PolynomialSchedule as PolynomialSchedule,
    RandomBatch as RandomBatch,
    RandomBatchSGD as RandomBatchSGD,
    RMSProp as RMSProp,
    Scheduled as Scheduled,
    ScheduledState as ScheduledState,
    SGD as SGD,
    SGDEpoch as SGDEpoch,
    SimultaneousGD as SimultaneousGD,
    solve as solve,
    WarmupCosineSchedule as WarmupCosineSchedule,
)


__version__ = "0.1.0"
