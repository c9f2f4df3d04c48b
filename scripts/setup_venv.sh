#!/usr/bin/env bash
# Create or refresh .venv in the repository root and install marble-rl with its first-party
# plugins. A second run with nothing changed skips every install (a stamp of the inputs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
PY="${PYTHON:-python3}"

# torch 2.14.1 + torchvision 0.29.1: open_clip (HPSv2 reward) needs a torchvision that imports,
# and PyPI's torchvision does not import beside the 2.13 CPU build. Both come from local disk here.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
# First-party plugin distributions, installed like any third party's (entry points).
PLUGINS="rewards plugins/diffusers plugins/world"

inputs() {
  echo "$TORCH_PINS"
  cat pyproject.toml scripts/setup_venv.sh
  for p in $PLUGINS; do [ -f "$p/pyproject.toml" ] && cat "$p/pyproject.toml"; done
}
stamp_now="$(inputs | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.marble-stamp"

if [ -x "$venv/bin/python" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_now" ]; then
  exit 0  # up to date
fi

echo "[setup] preparing $venv (first run or changed dependencies)" >&2
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
log="$venv/pip-install.log"
: > "$log"
pip_install() {  # quiet on success; the log's tail on failure
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -30 >&2
    echo "[setup] pip install failed; full log: $log" >&2
    exit 1
  fi
}
pip_install $TORCH_PINS
extras=()
for p in $PLUGINS; do
  [ -f "$p/pyproject.toml" ] || continue
  case "$p" in
    rewards) extras+=("-e" "./$p[all]") ;;
    *) extras+=("-e" "./$p") ;;
  esac
done
pip_install $TORCH_PINS -e ".[test]" "${extras[@]}"
echo "$stamp_now" > "$stamp_file"
echo "[setup] done" >&2
