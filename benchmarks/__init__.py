"""driftlab's benchmarks: flow-approximation sweeps and performance ratios.

Scripts, not tests; run them from the repository root, e.g.
`python -m benchmarks.flow_error --preset fast`. See `benchmarks/README.md`.
"""
