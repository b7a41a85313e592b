import json
import os
import platform
import tempfile

import jax
import numpy as np


def write_json_atomic(data, path: str) -> str:
    """Write `data` as JSON through a temporary file and `os.replace`: never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2, default=_to_builtin)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _to_builtin(value):
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def machine_info() -> dict:
    """The machine and library versions a result was measured with."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        # Timings mean little without it: other jobs on the same cores inflate them.
        "load_average": list(os.getloadavg()),
        "devices": [str(device) for device in jax.devices()],
    }
