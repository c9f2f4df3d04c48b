#!/usr/bin/env bash
# The one prepared GPU check of marble bench (issue 8). Run ON THE DEVICE MACHINE, in the repo root:
#
#   here:    bash benchmarks/prepare_gpu_wheels.sh            # once: .gpu-wheels/ (diffusers, omegaconf, cvxpy)
#   device:  run(command="bash benchmarks/gpu_bench.sh", carry=[".gpu-wheels"], timeout_s=540)
#
# What travels: the repo (marble, plugins/diffusers) and .gpu-wheels/; NOT .venv (gigabytes):
# the image's own python3 (torch + CUDA) is used, the missing wheels are installed offline.
# Steps (each bounded, total < 9 min so the 15-min device budget leaves room for one rerun):
#   1. benchmarks/gpu_setup.sh: offline install of the wheels + editable marble-rl and plugins
#   2. preflight: the tiny bench ON CUDA, eager then compiled (seconds): the trainer code runs on
#      CUDA (a device bug fails here, not 5 minutes into the big run)
#   3. the SD3.5-M-size bench, compiled (the default on CUDA): $OUT/bench.json + the table
# Env: BENCH_ARGS (extra args for step 3), SKIP_PREFLIGHT=1, BENCH_TIMEOUT (s, default 420).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh

# 2. preflight on CUDA: tiny, eager and compiled, a few seconds each (compile: tens of seconds)
if [ "${SKIP_PREFLIGHT:-0}" != 1 ]; then
  for c in --no-compile --compile; do
    log "preflight: marble bench --tiny --device cuda $c"
    timeout 150 $PY -m marble.cli bench --tiny --device cuda $c --steps 2,3 --group 8 --iterations 2 \
        --refresh-every 2 --repeats 1 --train-timesteps 1 --json "/tmp/preflight${c//-/_}.json" \
        >>"$OUT/preflight.log" 2>&1 || { tail -40 "$OUT/preflight.log"; log "preflight $c FAILED"; exit 4; }
  done
  tail -12 "$OUT/preflight.log"
fi

# 3. the real thing: SD3.5-M size, 512 px, group 24, micro-batch 8, K=5, N=10, compiled
log "marble bench (SD3.5-M size) ${BENCH_ARGS:-}"
timeout "${BENCH_TIMEOUT:-420}" $PY -m marble.cli bench --device cuda --json "$OUT/bench.json" ${BENCH_ARGS:-} \
    2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
log "bench exit $rc (124 = timed out: rerun with BENCH_ARGS='--iterations 5 --repeats 2' or --steps 10)"
exit "$rc"
