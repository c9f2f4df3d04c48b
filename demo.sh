#!/usr/bin/env bash
# The main job, small, on a CPU with no downloads (sets up .venv first if needed).
#
# Fine-tunes the packaged pretrained 64 px world model (plugins/world) against four verifiable
# rewards - colour, count, position, and a conflicting contrast "aesthetic" - twice with the same
# seed and budget: the weighted-sum baseline and MARBLE. Writes runs/demo-<time>/ with both runs
# and report/: reward curves (PNG), alpha curves, conflict diagnostics, before/after image grids
# and summary.md, which it also prints. Extra key=value arguments override the config.
# MARBLE_DEMO_OUT sets the output folder; MARBLE_SKIP_SETUP=1 skips the venv check.
set -euo pipefail
cd "$(dirname "$0")"
[ -n "${MARBLE_SKIP_SETUP:-}" ] || scripts/setup_venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out="${MARBLE_DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/marble compare configs/world_marble.yaml --balancers weighted_sum,marble --seeds 0 --jobs 2 --out "$out" "$@" >/dev/null
.venv/bin/python -m marble_world.report --runs "$out/weighted_sum-seed0" "$out/marble-seed0" \
  --labels "weighted sum" "MARBLE" --out "$out/report"
echo
echo "report: $out/report (summary.md, rewards.png, alpha.png, diagnostics.png, before/after grids)"
echo "One seed. Over six seeds the two balancers tie on the worst reward; longer, MARBLE does worse (README, Status)."
echo "For intervals:"
echo "  .venv/bin/marble compare configs/world_marble.yaml --balancers weighted_sum,marble --seeds 0,1,2 --jobs 2"
