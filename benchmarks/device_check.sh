#!/usr/bin/env bash
# Runs the fast edge-of-stability preset and the scale table on one GPU and writes their
# results under benchmarks/results/device/ (device.txt: the machine; eos/: the suite's
# JSON, Markdown and figures; scale.{json,md}; times.txt: wall-clock seconds per command).
#
#     bash benchmarks/device_check.sh [--scale-sizes "1e4 1e5 1e6"]
#
# Run from a source checkout with driftlab and a CUDA build of jaxlib installed
# (pip install -e ".[bench]" "jax[cuda12]"). JAX_PLATFORMS=cuda is exported, so nothing
# falls back to the CPU silently: the script stops if JAX sees no GPU. Absolute times
# are reported from here only (on CPU the suites report ratios). See docs/devices.md.
set -euo pipefail

scale_sizes="1e4 1e5 1e6"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scale-sizes) scale_sizes="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="benchmarks/results/device"
export JAX_PLATFORMS=cuda
# Keep the whole GPU for one process at a time, without preallocating 75% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

info="$(python - <<'PY'
import platform, sys
try:
    import jax
    devices = jax.devices()
except Exception as error:  # no CUDA jaxlib, no driver, no GPU
    sys.exit(f"device_check.sh: JAX sees no GPU ({error!r}); install jax[cuda12] on a GPU machine.")
if devices[0].platform != "gpu":
    sys.exit(f"device_check.sh: JAX sees no GPU (devices: {devices}).")
print("jax", jax.__version__, "| python", platform.python_version(), "|", platform.node())
for device in devices:
    print(device.id, device.device_kind, device.platform)
PY
)"
mkdir -p "$out/eos"
echo "$info" | tee "$out/device.txt"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/device.txt"
fi
: > "$out/times.txt"

timed() {  # timed NAME COMMAND...: runs it, appends "NAME <seconds>s" to times.txt
    local name="$1"; shift
    local start; start=$(date +%s)
    echo "== $name: $*"
    "$@"
    echo "$name $(( $(date +%s) - start ))s" | tee -a "$out/times.txt"
}

timed eos-fast driftlab bench --suite eos --preset fast --output "$out/eos"
# shellcheck disable=SC2086  # the sizes are separate arguments
timed scale python -m benchmarks.scale --sizes $scale_sizes --output "$out"
echo "device_check.sh: results in $out"
