"""The report builder on synthetic metrics files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from marble_world import report

REWARDS = ("world_color", "world_count", "world_contrast")


def write_run(folder, *, marble: bool, n: int = 30, with_eval: bool = True):
    folder.mkdir(parents=True)
    rows = []
    for it in range(n):
        row = {"iteration": it}
        for k, name in enumerate(REWARDS):
            # weighted sum: contrast dominates, colour stalls; MARBLE: all rise
            slope = 0.01 if marble else (0.02 if name == "world_contrast" else 0.0)
            row[f"reward/{name}/mean"] = 0.3 + slope * it
        if marble and it % 10 == 0:
            for name in REWARDS:
                row[f"alpha/{name}"] = 1 / 3
        if marble:
            for name in REWARDS:
                row[f"alpha_bar/{name}"] = 1 / 3
        if it % 10 == 0:
            row["cos/marble/min"] = 0.1 if marble else None
            row["cos/weighted_sum/min"] = -0.2
            row["conflict_rate/weighted_sum"] = 0.5
            if marble:
                row["conflict_rate/marble"] = 0.0
        if with_eval and it in (0, n - 1):
            for name in REWARDS:
                row[f"eval/{name}/mean"] = row[f"reward/{name}/mean"] + 0.01
        rows.append({k: v for k, v in row.items() if v is not None})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_report_files_and_table(tmp_path):
    write_run(tmp_path / "ws", marble=False)
    write_run(tmp_path / "mb", marble=True)
    (tmp_path / "mb" / "grids").mkdir()
    report.save_grid(torch.rand(2, 3, 64, 64), ["a red circle", "two blue squares"], tmp_path / "mb" / "grids" / "after.png")
    (tmp_path / "ws" / "images").mkdir()
    for it in (0, 10, 29):  # the trainer's evaluation grids: first and last are copied
        report.save_grid(torch.rand(1, 3, 64, 64), ["x"], tmp_path / "ws" / "images" / f"eval-{it:06d}.png")
    md = report.build_report([tmp_path / "ws", tmp_path / "mb"], ["weighted sum", "MARBLE"], tmp_path / "out")
    assert (tmp_path / "out" / "weighted_sum_eval-000000.png").exists()
    assert (tmp_path / "out" / "weighted_sum_eval-000029.png").exists()
    assert not (tmp_path / "out" / "weighted_sum_eval-000010.png").exists()
    for f in ("rewards.png", "alpha.png", "diagnostics.png", "summary.md", "MARBLE_after.png"):
        assert (tmp_path / "out" / f).stat().st_size > 300, f
        if f.endswith(".png"):
            Image.open(tmp_path / "out" / f).verify()
    assert (tmp_path / "out" / "summary.md").read_text() == md
    cols, table, note = report.summarize(
        [report.read_metrics(tmp_path / "ws"), report.read_metrics(tmp_path / "mb")], ["weighted sum", "MARBLE"]
    )
    assert cols == ["base", "weighted sum", "MARBLE"] and "eval" in note
    assert table["world_color"]["base"] == pytest.approx(0.31)
    assert table["world_color"]["weighted sum"] == pytest.approx(0.31)
    assert table["world_color"]["MARBLE"] == pytest.approx(0.3 + 0.01 * 29 + 0.01)
    assert table["world_contrast"]["weighted sum"] == pytest.approx(0.3 + 0.02 * 29 + 0.01)
    assert "| world_color | 0.31 | 0.31 | **0.6** |" in md
    assert "![Per-reward mean curves](rewards.png)" in md and "MARBLE_after.png" in md


def test_summary_without_eval_uses_training_tail(tmp_path):
    write_run(tmp_path / "a", marble=False, with_eval=False, n=12)
    cols, table, note = report.summarize([report.read_metrics(tmp_path / "a")], ["a"])
    assert "last 5" in note
    assert table["world_contrast"]["base"] == pytest.approx(0.3)
    assert table["world_contrast"]["a"] == pytest.approx(0.3 + 0.02 * np.mean([7, 8, 9, 10, 11]))


def test_missing_keys_are_skipped(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"iteration": 0}\n{"iteration": 1, "reward/x/mean": 0.5}\n\n{"iteration": 2, "reward/x/mean": NaN}\n'
    )
    md = report.build_report([run], None, tmp_path / "out")
    assert (tmp_path / "out" / "rewards.png").exists()
    assert not (tmp_path / "out" / "alpha.png").exists()
    assert not (tmp_path / "out" / "diagnostics.png").exists()
    assert "| x | 0.5 | 0.5 |" in md


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.build_report([tmp_path / "nope"], None, tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iteration": 0}\nnot json\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        report.read_metrics(tmp_path / "bad")
    write_run(tmp_path / "ok", marble=False, n=3)
    with pytest.raises(ValueError, match="1 runs but 2 labels"):
        report.build_report([tmp_path / "ok"], ["a", "b"], tmp_path / "out")
    with pytest.raises(ValueError, match="base"):
        report.build_report([tmp_path / "ok"], ["base"], tmp_path / "out")


def test_cli_prints_table(tmp_path):
    write_run(tmp_path / "ws", marble=False)
    write_run(tmp_path / "mb", marble=True)
    r = subprocess.run(
        [sys.executable, "-m", "marble_world.report", "--runs", str(tmp_path / "ws"), str(tmp_path / "mb"),
         "--labels", "weighted sum", "MARBLE", "--out", str(tmp_path / "rep")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "| reward | base | weighted sum | MARBLE |" in r.stdout
    assert (tmp_path / "rep" / "rewards.png").exists()
    r = subprocess.run([sys.executable, "-m", "marble_world.report", "--runs", str(tmp_path / "zz"), "--out",
                        str(tmp_path / "rep2")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "metrics.jsonl" in r.stderr


def test_save_grid_layout(tmp_path):
    imgs = torch.zeros(5, 3, 64, 64)
    imgs[:, 0] = 1.0  # red
    path = report.save_grid(imgs, [f'a sign that says "word{i}" with a long caption that wraps' for i in range(5)],
                            tmp_path / "g.png", ncols=3, cell=96)
    im = np.asarray(Image.open(path).convert("RGB"))
    assert im.shape[1] == 3 * (96 + 4) + 4
    # the first cell is the (upscaled) red image, text pixels (dark) lie under it
    assert (im[4:100, 4:100] == [255, 0, 0]).all()
    below = im[100:130, 4:100]
    assert (below.sum(-1) < 200).any()
    # numpy HWC uint8 and PIL lists work too
    report.save_grid(np.zeros((2, 64, 64, 3), dtype=np.uint8), ["a", "b"], tmp_path / "h.png")
    report.save_grid([Image.new("RGB", (32, 32))], ["c"], tmp_path / "i.png")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        report.save_grid(imgs[:2], ["x"], tmp_path / "j.png")


def test_table_has_the_worst_reward_gain_row():
    from marble_world.report import markdown_table

    table = {"a": {"base": 0.5, "ws": 0.7, "mb": 0.55}, "b": {"base": 0.2, "ws": 0.1, "mb": 0.3}}
    text = markdown_table(["base", "ws", "mb"], table)
    last = text.splitlines()[-1]
    # ws: min(+0.2, -0.1) = -0.1; mb: min(+0.05, +0.1) = +0.05 (the better one, in bold)
    assert last == "| worst-reward gain | | -0.1 | **+0.05** |"
