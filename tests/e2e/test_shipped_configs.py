"""The shipped configs validate with the installed first-party plugins (dry run builds nothing)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".yaml") and not f.startswith("accelerate"))


def marble(*args, env=None):
    return subprocess.run([sys.executable, "-m", "marble.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run(name):
    if name.startswith("sd35m") and not os.path.isdir(os.path.join(ROOT, "..", "shared", "data")):
        pytest.skip("the literature prompt files (../shared/data) are not beside this checkout")
    res = marble("train", f"configs/{name}", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "is valid" in res.stdout


def test_missing_model_folder_is_a_clear_error(tmp_path):
    # MARBLE_DATA (the documented switch) points the shipped config at small local prompt files,
    # so this runs without ../shared/data beside the checkout
    data = tmp_path / "data" / "prompts"
    data.mkdir(parents=True)
    for name in ("pickscore_train", "ocr_test", "pickscore_test"):
        (data / f"{name}.txt").write_text('a red apple\na sign that says "hello"\n')
    res = marble("train", "configs/sd35m_marble.yaml", "backbone.args.model=/no/such/folder",
                 f"output_dir={tmp_path / 'run'}", env={"MARBLE_DATA": str(tmp_path / "data")})
    assert res.returncode == 2
    assert "/no/such/folder" in res.stderr and "backbone 'sd3'" in res.stderr and "Traceback" not in res.stderr
