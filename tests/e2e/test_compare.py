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
