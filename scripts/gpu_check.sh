#!/usr/bin/env bash
# Real-GPU check (needs an NVIDIA driver): NVML readings, four capped digits jobs at once whose caps sum
# below the card, each job's NVML-measured peak against its reservation, and the measured per-process
# overhead (NVML footprint less TensorFlow's own allocator peak), and each job's mean NVML per-process
# utilisation. Prints figures; exits non-zero on a failed job or a peak above its reservation.
#
#   scripts/gpu_check.sh            (from the repository root; installs into .venv-gpu if needed)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/vramq" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -e '.[gpu]'
fi
export PATH="$PWD/$VENV/bin:$PATH"

export VRAMQ_HOME=${VRAMQ_HOME:-$(mktemp -d /tmp/vramq-gpu-check.XXXX)}
export VRAMQ_PORT=${VRAMQ_PORT:-8765}
export VRAMQ_API_URL="http://127.0.0.1:$VRAMQ_PORT"
export VRAMQ_REDIS_URL=${VRAMQ_REDIS_URL:-redis://127.0.0.1:6390/0}
unset VRAMQ_GPUS

echo "== nvidia-smi"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free --format=csv || true

echo "== NVML through vramq's backend"
python -c '
from worker.gpu.nvml import NvmlBackend
b = NvmlBackend()
for g in b.gpus(): print(g)
print("processes:", b.processes())'

vramq up > "$VRAMQ_HOME/up.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -fs "$VRAMQ_API_URL/readyz" >/dev/null 2>&1 && break; sleep 1; done
export VRAMQ_TOKEN=$(vramq user add gpu-check --admin | tail -n 1)

python scripts/gpu_check.py
