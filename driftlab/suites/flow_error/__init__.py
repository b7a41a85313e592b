"""The flow-approximation sweep (`driftlab bench --suite flows`): cases, runs, report."""

from ._cases import (
    Case as Case,
    COMPLEX_STATE_FLOWS as COMPLEX_STATE_FLOWS,
    DENSE_PRINCIPAL_LIMIT as DENSE_PRINCIPAL_LIMIT,
    Expectation as Expectation,
    expectation as expectation,
    FIT_MAX as FIT_MAX,
    GLOBAL_FIT_MAX as GLOBAL_FIT_MAX,
    paired_flows as paired_flows,
    preconditioned_curvature as preconditioned_curvature,
    Preset as Preset,
    PRESET_GUIDE as PRESET_GUIDE,
    PRESETS as PRESETS,
    Scale as Scale,
    SCALES as SCALES,
    Start as Start,
    started as started,
    TRACKING_TOLERANCE as TRACKING_TOLERANCE,
)
from ._report import (
    markdown as markdown,
    plot_tracking as plot_tracking,
    write_figures as write_figures,
)
from ._runs import (
    DOES_NOT_EXIST as DOES_NOT_EXIST,
    FAILURES as FAILURES,
    fit as fit,
    flow_factories as flow_factories,
    main as main,
    measure as measure,
    path_spectrum as path_spectrum,
    PROGRAM as PROGRAM,
    quadratic_closed_form as quadratic_closed_form,
    run as run,
    run_case as run_case,
    run_drift as run_drift,
    tracking_limit as tracking_limit,
)
