import contextlib
import importlib.metadata
import json
import os
import platform
import tempfile

import jax
import numpy as np

from ._errors import InputError


def _file_mode() -> int:
    # What `open` would give a new file: 0o666 minus the umask (0o644 under the usual 022).
    # Python < 3.13 can only read the umask by setting it.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str, suffix: str):
    """Yield a temporary path next to `path`, moved onto `path` if the block succeeds.

    Readers never see a half-written file. `tempfile.mkstemp` creates the file
    private (0600); it gets the mode `open` would give it (0644 under umask 022)
    so that results are readable by others.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def checked_output_dir(path: str, name: str = "--output") -> str:
    """Create the directory `path` if needed and check a file can be written there.

    Called before a command computes anything, so that a bad location costs one
    line (`InputError`) and not a whole run followed by a traceback.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"`{name}` {path!r} is a file; name a directory for the results.")
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, suffix=".probe")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise InputError(
            f"`{name}` {path!r} cannot be written ({error.strerror}); name a writable directory."
        ) from None
    return path


def write_json_atomic(data, path: str) -> str:
    """Write `data` as JSON through a temporary file and `os.replace`: never half-written."""
    with atomic_path(path, ".json.tmp") as temporary, open(temporary, "w") as file:
        json.dump(data, file, indent=2, default=_to_builtin)
    return path


def _to_builtin(value):
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The machine and library versions a result was measured with."""
    from . import __version__

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "driftlab": __version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "equinox": _version("equinox"),
        "diffrax": _version("diffrax"),
        "optax": _version("optax"),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        # Timings mean little without it: other jobs on the same cores inflate them.
        "load_average": list(os.getloadavg()),
        "devices": [str(device) for device in jax.devices()],
    }


#: Where the `driftlab` commands and the suites write their results unless told otherwise
#: (relative to the working directory, so an installed package never writes inside itself).
DEFAULT_OUTPUT = "driftlab-results"
