"""The README's first command, shrunk to one iteration: both runs, the report, the printed table."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_script_one_iteration(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "MARBLE_SKIP_SETUP": "1", "MARBLE_DEMO_OUT": str(out), "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    res = subprocess.run(["bash", os.path.join(ROOT, "demo.sh"), "train.iterations=1", "train.prompts_per_iteration=2",
                          "train.eval_prompts_count=4", "train.eval_every=0"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    for run in ("weighted_sum-seed0", "marble-seed0"):
        assert (out / run / "metrics.jsonl").is_file()
        assert (out / run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    report = out / "report"
    for name in ("rewards.png", "alpha.png", "diagnostics.png", "summary.md"):
        assert (report / name).is_file(), name
        if name.endswith(".png"):
            assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (report / "summary.md").read_text()
    for reward in ("world_color", "world_count", "world_position", "world_contrast"):
        assert reward in table and reward in res.stdout
    assert "MARBLE" in res.stdout and "weighted sum" in res.stdout
