"""``marble score``: image files in, one line (or JSON) per image out."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from marble import score_cli
from marble.errors import MarbleError


def _parse(argv):
    parser = argparse.ArgumentParser(prog="marble")
    sub = parser.add_subparsers(dest="command", required=True)
    score_cli.add_parser(sub)
    return parser.parse_args(["score", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(64, 64), (48, 80), (64, 64)]):
        p = d / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_score_lines_and_json(files, capsys):
    from marble.host import build_reward

    assert score_cli.run(_parse(["jpeg_incompressibility", *files, "--prompt", "x"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == files
    reward = build_reward("jpeg_incompressibility", {})
    for path, line in zip(files, lines):
        x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None]
        assert float(line.split("\t")[0]) == pytest.approx(reward.score(x, ["x"], [{}]).scores.item(), rel=1e-6)

    assert score_cli.run(_parse(["jpeg_compressibility", *files, "--prompt", "x", "--json",
                                 "--args", "quality=80", "batch_size=2"])) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == files and all(r["score"] < 0 for r in rows)


def test_masked_images_print_na(files, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a sign that says "hello"\nno quotes here\na plain prompt\n')
    assert score_cli.run(_parse(["ocr", *files, "--prompts-file", str(prompts), "--args", "num_threads=1"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines][1:] == ["n/a", "n/a"]
    assert 0.0 <= float(lines[0].split("\t")[0]) <= 1.0
    assert score_cli.run(_parse(["ocr", files[1], "--prompt", "nothing quoted", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)[0]["score"] is None


def test_clip_reward_through_the_cli(ckpts, files, capsys):
    a = ckpts["clipscore"]
    argv = ["clipscore", *files, "--prompt", "a photo", "--args", f"model={a['model']}", f"processor={a['processor']}",
            "device=cpu", "--json"]
    assert score_cli.run(_parse(argv)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(-1 <= r["score"] <= 1 for r in rows)


def test_user_errors(files, tmp_path):
    with pytest.raises(MarbleError, match="image file not found"):
        score_cli.run(_parse(["jpeg_compressibility", str(tmp_path / "missing.png"), "--prompt", "x"]))
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    with pytest.raises(MarbleError, match="2 prompts for 3 images"):
        score_cli.run(_parse(["jpeg_compressibility", *files, "--prompts-file", str(two)]))
    with pytest.raises(MarbleError, match="key=value"):
        score_cli.run(_parse(["jpeg_compressibility", files[0], "--prompt", "x", "--args", "quality"]))
    with pytest.raises(MarbleError, match="unknown reward"):
        score_cli.run(_parse(["no_such_reward", files[0], "--prompt", "x"]))
    with pytest.raises(SystemExit):  # --prompt or --prompts-file is required
        _parse(["jpeg_compressibility", files[0]])


def test_wired_into_marble_cli(files, capsys):
    from marble import cli

    assert cli.main(["score", "jpeg_compressibility", files[0], "--prompt", "x"]) == 0
    assert capsys.readouterr().out.strip().endswith(files[0])
