#!/usr/bin/env bash
# Run HERE (the machine with PyPI access), before a device call: downloads the wheels that the
# GPU image lacks into .gpu-wheels/ (git-ignored via .git/info/exclude), for the image's Python
# (3.12, manylinux x86_64). The image already has torch, transformers, peft, accelerate, pluggy,
# numpy, scipy, safetensors, huggingface-hub, pillow, jinja2, joblib, pyyaml, tqdm, tensorboard,
# matplotlib; it lacks diffusers, omegaconf and cvxpy (+ its solvers). The wheels are taken without
# their dependencies (the device's pip has no index) and installed with --no-deps there. SCS (43 MB)
# is left out: the carry limit is 64 MiB and marble's QP uses Clarabel/OSQP.
# Then call the device with carry: [".gpu-wheels"] and command: bash benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.gpu-wheels/' .git/info/exclude 2>/dev/null || echo '/.gpu-wheels/' >> .git/info/exclude
rm -rf .gpu-wheels && mkdir -p .gpu-wheels
"$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --implementation cp -d .gpu-wheels \
  "diffusers==0.42.1" "omegaconf==2.4.0" "cvxpy==1.9.3" "clarabel==0.11.1" "osqp==1.1.3" \
  "qdldl==0.1.9.post1" "highspy==1.16.0" "sparsediffpy==0.6.1" "importlib_metadata==10.2.0"
du -sh .gpu-wheels  # must stay well under the 64 MiB carry limit
