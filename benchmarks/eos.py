"""The edge-of-stability suite (`driftlab.suites.eos`) writing into `benchmarks/results/`.

    python -m benchmarks.eos --preset fast
    python -m benchmarks.eos --preset fast --case cnn-mnist1d  # one case, into eos.json

The suite ships in the package (`driftlab bench --suite eos`); this entry point only
points its default `--output` at the developers' committed results.
"""

import sys

from driftlab.suites import eos

from ._common import RESULTS_DIR


def main(argv=None):
    eos.main(argv, prog="python -m benchmarks.eos", default_output=RESULTS_DIR)


if __name__ == "__main__":
    sys.exit(main())
