"""Optax transforms built from discretisation-drift analysis."""

from ._dal import DALState as DALState, drift_adjusted_learning_rate as drift_adjusted_learning_rate
