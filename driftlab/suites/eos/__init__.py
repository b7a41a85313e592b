"""The edge-of-stability suite (`driftlab bench --suite eos`): cases, runs, measurements, report."""

from ._cases import (
    Case as Case,
    DEEP_LINEAR_H as DEEP_LINEAR_H,
    DEEP_LINEAR_SCALE as DEEP_LINEAR_SCALE,
    flow_factories as flow_factories,
    PRESET_GUIDE as PRESET_GUIDE,
    presets as presets,
)
from ._measure import (
    ATOL as ATOL,
    CENTRAL_SUBSTEPS as CENTRAL_SUBSTEPS,
    HOVER_BAND as HOVER_BAND,
    LEAVE_FACTOR as LEAVE_FACTOR,
    measure_window as measure_window,
    onset_step as onset_step,
    oscillation_step as oscillation_step,
    overall_verdict as overall_verdict,
    RTOL as RTOL,
    verdicts as verdicts,
)
from ._report import (
    figures as figures,
    markdown as markdown,
    report as report,
    summary as summary,
)
from ._runs import (
    CENTRAL_BASELINE as CENTRAL_BASELINE,
    main as main,
    merge as merge,
    PRINCIPAL_BASELINE as PRINCIPAL_BASELINE,
    PROGRAM as PROGRAM,
    replace_runs as replace_runs,
    run as run,
    run_case as run_case,
    run_gd as run_gd,
    window_starts as window_starts,
)
