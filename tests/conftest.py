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


#: Clear JAX's caches after a module once the process holds this many memory mappings: far
#: below the kernel's default `vm.max_map_count` (65530) even after the largest module's
#: compilations (~15,000 mappings), and high enough that most modules reuse the earlier
#: modules' compilations (clearing after every module made the quick subset ~10 s slower).
MAPPINGS_BEFORE_CLEARING = 20_000


def _num_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # no procfs (macOS): no map-count limit to stay under
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compilations():
    """Free the compiled executables when the process holds too many memory mappings.

    Jitted functions at module level keep every executable compiled for a new static
    argument (a test's loss closure, step map or flow) for the life of the process, and
    each holds about three memory mappings of generated code. A long-lived xdist worker
    reached the kernel's `vm.max_map_count` (65530) after some 20,000 compilations, and
    XLA's compiler then segfaulted in `backend_compile_and_load`.
    """
    yield
    if _num_mappings() > MAPPINGS_BEFORE_CLEARING:
        jax.clear_caches()
        gc.collect()
