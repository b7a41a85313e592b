"""The suites behind `driftlab bench`: what a user runs to see which flow follows which optimiser.

- `driftlab.suites.flow_error`: the flow-approximation sweep (every paired flow, problem and
  optimiser over a grid of step sizes up to and past the edge of stability).
- `driftlab.suites.eos`: the edge-of-stability suite (GD on the field's networks; which flow
  follows it before and at the edge).

Each is a subpackage of private modules (cases, runs, measurements, report) re-exported
from its `__init__`. Nothing is imported here, so `driftlab` does not load them.
"""
