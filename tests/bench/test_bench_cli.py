"""`marble bench --tiny --device cpu`: the whole benchmark on a tiny random transformer."""

from __future__ import annotations

import json
import math

import pytest

from marble.cli import main

REQUIRED = [
    "device.peak_tflops", "model.transformer_params", "model.lora_params", "model.build_s",
    "flops.forward_per_sample_tflop", "flops.backward_per_sample_tflop",
    "micro_step.median_s", "micro_step.tflops", "micro_step.pct_peak", "micro_step.peak_memory_gb",
    "micro_step_refresh.median_s", "micro_step_refresh.tflops", "micro_step_refresh.peak_memory_gb",
    "qp.combine_median_ms", "qp.pct_of_micro_step",
    "compile.first_rollout_s", "compile.first_micro_step_s", "total_s",
]
PER_BALANCER = ["time_s", "train_s", "rollout_s", "peak_memory_gb", "tflops", "pct_peak"]
PER_ROLLOUT = ["median_s", "tflops", "pct_peak", "peak_memory_gb", "tflop"]


def get(d, path):
    for part in path.split("."):
        assert part in d, f"missing {path!r} (no {part!r})"
        d = d[part]
    return d


def positive(value, path):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path} = {value!r} is not a number"
    assert math.isfinite(value) and value > 0, f"{path} = {value!r} is not a positive number"


def test_bench_tiny_cpu_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--device", "cpu", "--json", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out.read_text())

    for path in REQUIRED:
        positive(get(r, path), path)
    assert set(r["rollout"]) == {"10", "25"}
    for s, e in r["rollout"].items():
        assert e["group"] == 24 and e["batch"] == 8
        for k in PER_ROLLOUT:
            positive(e[k], f"rollout.{s}.{k}")
    # 25 steps do 2.5x the work of 10
    assert r["rollout"]["25"]["tflop"] == pytest.approx(2.5 * r["rollout"]["10"]["tflop"])
    assert set(r["iteration"]) == {"weighted_sum", "marble", "marble_full"}
    for name, e in r["iteration"].items():
        for k in PER_BALANCER:
            positive(e[k], f"iteration.{name}.{k}")
    # default: one refresh cycle of N=10 marble iterations, one of them a refresh
    m = r["iteration"]["marble"]
    assert m["iterations"] == 10 and m["refresh_fraction"] == pytest.approx(0.1)
    positive(m["refresh_time_s"], "iteration.marble.refresh_time_s")
    assert r["iteration"]["marble_full"]["refresh_fraction"] == 1.0
    assert r["iteration"]["weighted_sum"]["refresh_fraction"] == 0.0
    for name in ("marble", "marble_full"):
        for k in ("speed_vs_weighted_sum", "train_speed_vs_weighted_sum", "memory_vs_weighted_sum"):
            positive(r["ratios"][name][k], f"ratios.{name}.{k}")
    assert r["config"]["k"] == 5 and r["config"]["compile"] is False  # auto: eager on the CPU
    assert r["model"]["size"] == "tiny" and r["memory_kind"] == "cpu_peak_rss"
    # the table comes last
    assert table[-1].startswith("QP + bookkeeping")
    assert any(line.startswith("iteration: marble (K=5, N=10)") for line in table)


def test_bench_small_options_and_errors(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--tiny", "--device", "cpu", "--json", str(out), "--steps", "2,3", "--group", "4",
            "--micro-batch", "2", "--k", "2", "--refresh-every", "2", "--iterations", "2", "--train-timesteps", "1",
            "--repeats", "1", "--resolution", "32"]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert set(r["rollout"]) == {"2", "3"} and r["config"]["k"] == 2 and r["model"]["resolution"] == 32
    assert r["iteration"]["marble"]["refresh_fraction"] == pytest.approx(0.5)
    capsys.readouterr()
    assert main(["bench", "--tiny", "--device", "cpu", "--k", "9"]) == 2
    assert "--k must be in 1..8" in capsys.readouterr().err
    assert main(["bench", "--tiny", "--device", "cpu", "--steps", "2", "--train-timesteps", "3"]) == 2
    assert "--train-timesteps" in capsys.readouterr().err
