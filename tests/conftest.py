import os

import hypothesis
import jax


jax.config.update("jax_enable_x64", True)

# Property tests are bounded and deterministic: a fixed derandomised profile for CI,
# and the same bounds locally so a local run reproduces what CI sees.
hypothesis.settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "dev",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")
