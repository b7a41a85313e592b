"""One-step maps (the optimisers), their iterates, and diffrax solves of flows."""

from ._iterate import advance as advance, iterate as iterate
from ._maps import (
    AbstractEulerStepMap as AbstractEulerStepMap,
    AbstractStepMap as AbstractStepMap,
    Adam as Adam,
    AdamState as AdamState,
    AlternatingGD as AlternatingGD,
    ExplicitEuler as ExplicitEuler,
    GradientDescent as GradientDescent,
    HeavyBall as HeavyBall,
    MomentumState as MomentumState,
    Nesterov as Nesterov,
    OptaxState as OptaxState,
    OptaxStepMap as OptaxStepMap,
    OrderAveragedSGDEpoch as OrderAveragedSGDEpoch,
    RMSProp as RMSProp,
    RMSPropState as RMSPropState,
    SGD as SGD,
    SGDEpoch as SGDEpoch,
    SimultaneousGD as SimultaneousGD,
)
from ._random import (
    AbstractRandomBatchMap as AbstractRandomBatchMap,
    RandomBatch as RandomBatch,
    RandomBatchMapState as RandomBatchMapState,
    RandomBatchSGD as RandomBatchSGD,
    RandomBatchState as RandomBatchState,
)
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    AdamODE as AdamODE,
    AdamODEState as AdamODEState,
    CosineSchedule as CosineSchedule,
    ExponentialSchedule as ExponentialSchedule,
    FunctionSchedule as FunctionSchedule,
    KinkWarning as KinkWarning,
    OptaxSchedule as OptaxSchedule,
    PolynomialSchedule as PolynomialSchedule,
    Scheduled as Scheduled,
    ScheduledState as ScheduledState,
    WarmupCosineSchedule as WarmupCosineSchedule,
)
from ._solve import solve as solve
