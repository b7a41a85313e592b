"""Measuring drift: local and global errors, drift along a run, orders, spectra."""

from ._boundary import boundary_layer as boundary_layer, BoundaryLayer as BoundaryLayer
from ._error import (
    Drift as Drift,
    drift as drift,
    ErrorMeasurement as ErrorMeasurement,
    global_error as global_error,
    local_error as local_error,
)
from ._gradient_structure import (
    GradientStructure as GradientStructure,
    is_gradient_field as is_gradient_field,
)
from ._moments import (
    Moments as Moments,
    momentum_moments as momentum_moments,
    sgd_moments as sgd_moments,
    sme_moments as sme_moments,
)
from ._order import (
    order_of_accuracy as order_of_accuracy,
    OrderEstimate as OrderEstimate,
)
from ._scaling import (
    AbstractScalingRule as AbstractScalingRule,
    LinearScalingRule as LinearScalingRule,
    scaling_rule_error as scaling_rule_error,
    ScalingRuleCheck as ScalingRuleCheck,
    SquareRootScalingRule as SquareRootScalingRule,
)
from ._spectra import (
    batch_sharpness as batch_sharpness,
    hessian_eigenpairs as hessian_eigenpairs,
    HessianSpectrum as HessianSpectrum,
    lambda_max as lambda_max,
    preconditioned_eigenpairs as preconditioned_eigenpairs,
    preconditioned_stability_threshold as preconditioned_stability_threshold,
    stability_index as stability_index,
)
from ._time_average import (
    averaging_weights as averaging_weights,
    distance_to_time_average as distance_to_time_average,
    time_average as time_average,
    TimeAverageDistance as TimeAverageDistance,
)
from ._weak import (
    weak_error as weak_error,
    weak_order_of_accuracy as weak_order_of_accuracy,
    WeakError as WeakError,
    WeakOrderEstimate as WeakOrderEstimate,
)
