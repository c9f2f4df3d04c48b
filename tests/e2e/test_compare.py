"""marble compare: balancers x seeds, a table with 95% intervals."""

from __future__ import annotations

import json
import math

import torch
from omegaconf import OmegaConf

from marble.cli import main
from marble.compare import mean_ci
from marble.testing import marble_plugin  # noqa: F401

import test_train_tiny as tt

torch.set_num_threads(1)


def test_mean_ci_against_hand_values():
    m, ci = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(ci, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9)
    m, ci = mean_ci([5.0])
    assert m == 5.0 and ci != ci


def test_compare_two_balancers_two_seeds(marble_plugin, tmp_path, capsys):
    marble_plugin(tt.Plugin(), name="conflict")
    data = tt.config(tmp_path, "base", iterations=2, eval_every=2, save_every=0)
    path = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(data), path)
    out = tmp_path / "cmp"
    code = main(["compare", str(path), "--balancers", "weighted_sum,marble", "--seeds", "0,1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| reward" in text and "weighted_sum" in text and "marble" in text and "±" in text
    assert "worst-reward gain" in text
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["runs"]) == {"weighted_sum", "marble"}
    finals = summary["balancers"]["marble"]["per_seed"]["redness"]
    assert len(finals) == 2 and finals[0] != finals[1]  # different seeds, different runs
    # a second call reuses the finished runs and prints the same table
    assert main(["compare", str(path), "--balancers", "weighted_sum,marble", "--seeds", "0,1", "--out", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_paired_worst_gain_difference_against_hand_values(tmp_path):
    """summarize(): worst gain per run = min over rewards of (last eval - base eval); the paired
    row is the per-seed difference to the first balancer, mean and t-interval."""
    from marble.compare import format_table, summarize

    def run(name, base, final):
        d = tmp_path / name
        d.mkdir()
        lines = [{"iteration": 0, **{f"eval/{k}/mean": v for k, v in base.items()}},
                 {"iteration": 5, "reward/a/mean": 0.0},
                 {"iteration": 10, **{f"eval/{k}/mean": v for k, v in final.items()}}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
        return str(d)

    b = {"a": 0.5, "b": 0.2}
    runs = {"ws": {0: run("ws0", b, {"a": 0.9, "b": 0.1}), 1: run("ws1", b, {"a": 0.6, "b": 0.3})},
            "mb": {0: run("mb0", b, {"a": 0.7, "b": 0.4}), 1: run("mb1", b, {"a": 0.55, "b": 0.5})}}
    s = summarize(runs, ["a", "b"])
    # ws worst gains: min(0.4, -0.1) = -0.1, min(0.1, 0.1) = 0.1; mb: min(0.2, 0.2) = 0.2, min(0.05, 0.3) = 0.05
    assert math.isclose(s["balancers"]["ws"]["worst_gain"][0], 0.0, abs_tol=1e-12)
    diffs = [0.2 - (-0.1), 0.05 - 0.1]
    m, ci = s["balancers"]["mb"]["worst_gain_vs_first"]
    assert math.isclose(m, sum(diffs) / 2, rel_tol=1e-9)
    assert math.isclose(ci, 12.706 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2), rel_tol=1e-9)
    assert "worst gain - ws's (paired)" in format_table(s, ["a", "b"])


def test_parallel_jobs_give_the_same_runs_as_in_process(tmp_path, capsys):
    """--jobs 2 trains each run in its own `marble train` process (installed plugins: the world);
    on the CPU with one thread the results are bit-identical to training them in this process."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = os.path.join(root, "configs", "world_marble.yaml")
    small = ["train.iterations=1", "train.prompts_per_iteration=2", "train.eval_prompts_count=4",
             "train.eval_every=0", "train.progress=false"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert main(["compare", cfg, "--seeds", "0", "--out", str(seq), *small]) == 0
    assert main(["compare", cfg, "--seeds", "0", "--jobs", "2", "--out", str(par), *small]) == 0
    a = json.loads((seq / "compare.json").read_text())["balancers"]
    b = json.loads((par / "compare.json").read_text())["balancers"]
    assert a == b
    assert (par / "configs" / "marble-seed0.yaml").is_file() and (par / "marble-seed0.log").is_file()
    # a failing run is reported with its log, and the command exits 2
    capsys.readouterr()
    code = main(["compare", cfg, "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path / "bad"), *small,
                 "backbone.args.model=/nonexistent/model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "runs failed" in err and "/nonexistent/model" in err


def test_base_interval_counts_seeds_not_runs(tmp_path):
    """Two balancers on the same two seeds: the base column is the mean over the 2 seeds with a
    2-value interval (each seed's base counted once, not once per balancer)."""
    from marble.compare import summarize

    def run(name, base):
        d = tmp_path / name
        d.mkdir()
        rows = [{"iteration": 0, "eval/a/mean": base}, {"iteration": 3, "eval/a/mean": base + 0.1}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in rows))
        return str(d)

    runs = {"x": {0: run("x0", 0.2), 1: run("x1", 0.4)}, "y": {0: run("y0", 0.2), 1: run("y1", 0.4)}}
    m, ci = summarize(runs, ["a"])["base"]["a"]
    assert math.isclose(m, 0.3) and math.isclose(ci, 12.706 * (0.2 / math.sqrt(2)) / math.sqrt(2), rel_tol=1e-9)


def test_parallel_jobs_stop_with_the_command(tmp_path):
    """SIGTERM (or Ctrl-C) to `marble compare --jobs 2` stops its training processes too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "stopme"
    proc = subprocess.Popen([sys.executable, "-m", "marble.cli", "compare", os.path.join(root, "configs", "world_marble.yaml"),
                             "--seeds", "0", "--jobs", "2", "--out", str(out), "train.iterations=500"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root)

    def children():  # processes whose command line names this test's run configs (Linux /proc)
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{pid}/stat") as f:
                    zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                continue
            if str(out / "configs") in cmd and not zombie:
                found.append(pid)
        return found

    deadline = time.time() + 120
    while len(children()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(children()) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in err
    assert children() == []
