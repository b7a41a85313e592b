"""The flow sweep (`driftlab.suites.flow_error`) writing into `benchmarks/results/`.

    python -m benchmarks.flow_error --preset fast
    python -m benchmarks.flow_error --preset fast --case quadratic/gd   # one case, merged

The suite ships in the package (`driftlab bench --suite flows`); this entry point only
points its default `--output` at the developers' committed results.
"""

import sys

from driftlab.suites import flow_error

from ._common import RESULTS_DIR


def main(argv=None) -> int:
    return flow_error.main(argv, prog="python -m benchmarks.flow_error", default_output=RESULTS_DIR)


if __name__ == "__main__":
    sys.exit(main())
