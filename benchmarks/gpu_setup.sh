#!/usr/bin/env bash
# Sourced ON THE DEVICE MACHINE by gpu_bench.sh / gpu_device_check.sh: installs the carried wheels
# (.gpu-wheels/, made here by prepare_gpu_wheels.sh) and marble-rl + its first-party plugins
# editable, all offline and without dependency resolution (the image holds torch & co).
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/marble-gpu-out}"; mkdir -p "$OUT"
log() { echo "[gpu $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu.log" >&2; }
log "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/gpu.log"
if ! $PY -c "import diffusers, omegaconf, cvxpy" 2>/dev/null; then
  [ -d .gpu-wheels ] || { log "diffusers/omegaconf/cvxpy missing and no .gpu-wheels/: run benchmarks/prepare_gpu_wheels.sh here, carry .gpu-wheels"; exit 3; }
  $PY -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile .gpu-wheels/*.whl \
      >>/tmp/marble-pip.log 2>&1 || { tail -20 /tmp/marble-pip.log; log "wheel install failed"; exit 3; }
fi
$PY -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation \
    -e . -e plugins/diffusers -e plugins/world >>/tmp/marble-pip.log 2>&1 || { tail -20 /tmp/marble-pip.log; log "editable install failed"; exit 3; }
$PY -c "import marble_diffusers, marble_world, cvxpy; print('cvxpy solvers', cvxpy.installed_solvers())" 2>&1 | tee -a "$OUT/gpu.log"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MARBLE_CACHE=/tmp/marble-cache
