import gc
import os

import hypothesis
import jax
import pytest


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


@pytest.fixture(autouse=True, scope="module")
def _release_compilations():
    """Free each test module's compiled executables when it ends.

    Jitted functions at module level keep every executable compiled for a new static
    argument (a test's loss closure, step map or flow) for the life of the process, and
    each holds about three memory mappings of generated code. A long-lived xdist worker
    reaches the kernel's `vm.max_map_count` (65530) after some 20,000 compilations, and
    XLA's compiler then segfaults in `backend_compile_and_load`.
    """
    yield
    jax.clear_caches()
    gc.collect()
