#!/usr/bin/env bash
# Run HERE (the machine with PyPI access), before a device call: downloads the wheels that the
# GPU image lacks into .gpu-wheels/ (git-ignored via .git/info/exclude), for the image's Python
# (3.12, manylinux x86_64). The image already has torch, transformers, peft, accelerate, pluggy,
# numpy, scipy, safetensors, tqdm, tensorboard, pillow; it lacks diffusers, omegaconf and cvxpy.
# Then call the device with carry: [".gpu-wheels"] and command: bash benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.gpu-wheels/' .git/info/exclude 2>/dev/null || echo '/.gpu-wheels/' >> .git/info/exclude
mkdir -p .gpu-wheels
"$PY" -m pip download --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --implementation cp -d .gpu-wheels \
  "diffusers==0.42.1" "omegaconf>=2.3" "antlr4-python3-runtime==4.9.3" "cvxpy>=1.4" clarabel osqp scs \
  importlib_metadata
du -sh .gpu-wheels  # must stay well under the 64 MiB carry limit
