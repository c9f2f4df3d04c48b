#!/usr/bin/env bash
# The main job, small, on a CPU with no downloads (sets up .venv first if needed).
# Trains the tiny SD3 backbone against the JPEG reward with MARBLE and writes runs/demo/.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/marble train configs/tiny.yaml output_dir="$out" "$@"
