"""`python -m driftlab.cli`: the `driftlab` command."""

import sys

from . import main


sys.exit(main())
