"""driftlab's developer benchmarks: performance ratios, scale, side-by-side runs, mutations.

The suites users run (`driftlab bench`) live in `driftlab.suites`; `flow_error.py` and
`eos.py` here run them into `benchmarks/results/`.

Scripts, not tests; run them from the repository root, e.g.
`python -m benchmarks.flow_error --preset fast`. See `benchmarks/README.md`.
"""
