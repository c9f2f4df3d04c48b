"""Clear errors: missing weight files (reward, path looked for, how to get it), bad inputs,
non-finite scores."""

from __future__ import annotations

import os

import pytest
import torch

from marble import RewardError
from marble.errors import ConfigError


# ---------------------------------------------------------------------- missing weights
def test_missing_aesthetic_mlp(ckpts, build, tmp_path):
    path = str(tmp_path / "nowhere" / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(RewardError) as e:
        build("aesthetic", **{**ckpts["aesthetic"], "mlp_path": path})
    msg = str(e.value)
    assert "'aesthetic'" in msg and path in msg
    assert "github.com/christophschuhmann/improved-aesthetic-predictor" in msg and "mlp_path=" in msg


def test_missing_hps_checkpoint_path(ckpts, build, tmp_path):
    path = str(tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardError) as e:
        build("hpsv2", **{**ckpts["hpsv2"], "checkpoint": path})
    msg = str(e.value)
    assert "'hpsv2'" in msg and path in msg and "xswu/HPSv2" in msg and "checkpoint=" in msg


def test_missing_hps_checkpoint_bare_name_offline(ckpts, build, tmp_path, monkeypatch):
    """The default (a bare file name) is looked for in the working directory and the HF cache;
    offline, the error says where it looked and where to download from."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    args = {k: v for k, v in ckpts["hpsv2"].items() if k not in ("checkpoint", "hub_repo")}
    with pytest.raises(RewardError) as e:
        build("hpsv2", **args)
    msg = str(e.value)
    assert "'hpsv2'" in msg and os.path.join(str(tmp_path), "HPS_v2.1_compressed.pt") in msg
    assert "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt" in msg


def test_missing_pickscore_folder(ckpts, build, tmp_path):
    path = str(tmp_path / "PickScore_v1")
    with pytest.raises(RewardError) as e:
        build("pickscore", **{**ckpts["pickscore"], "model": path})
    msg = str(e.value)
    assert "'pickscore'" in msg and path in msg and "yuvalkirstain/PickScore_v1" in msg


def test_hub_id_not_cached_offline(build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardError) as e:
        build("clipscore", model="some-org/not-cached-clip")
    msg = str(e.value)
    assert "'clipscore'" in msg and "some-org/not-cached-clip" in msg and "hf download" in msg


def test_wrong_aesthetic_file(ckpts, build, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(RewardError, match="aesthetic.*not an improved-aesthetic-predictor state dict"):
        build("aesthetic", **{**ckpts["aesthetic"], "mlp_path": str(bad)})


def test_hps_checkpoint_of_another_architecture(ckpts, build, tmp_path):
    bad = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, bad)
    with pytest.raises(RewardError, match="hpsv2.*does not match the open_clip architecture"):
        build("hpsv2", **{**ckpts["hpsv2"], "checkpoint": str(bad)})


def test_bad_args(build):
    with pytest.raises(RewardError, match="'jpeg_compressibility'.*batch_size"):
        build("jpeg_compressibility", batch_size=0)
    with pytest.raises(RewardError, match="'ocr'.*device"):
        build("ocr", device="tpu")
    with pytest.raises(ConfigError, match="unknown key"):
        build("jpeg_compressibility", qualty=90)
    with pytest.raises(RewardError, match="'ocr': det_model file not found: /nonexistent/det.onnx"):
        build("ocr", det_model="/nonexistent/det.onnx")


def test_bad_dtype_names_the_reward(ckpts, build):
    with pytest.raises(RewardError, match="'clipscore'.*unknown dtype"):
        build("clipscore", **ckpts["clipscore"], dtype="fp8")


# ---------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def rewards(ckpts, build):
    return [build("jpeg_compressibility"), build("clipscore", **ckpts["clipscore"]), build("ocr", num_threads=1)]


BAD_INPUTS = [
    ("torch.Tensor", lambda: [[0.5]], 1),
    ("N x 3 x H x W", lambda: torch.rand(3, 16, 16), 1),
    ("N x 3 x H x W", lambda: torch.rand(1, 4, 16, 16), 1),
    ("N x 3 x H x W", lambda: torch.rand(1, 1, 16, 16), 1),
    ("dtype torch.int64", lambda: torch.zeros(1, 3, 16, 16, dtype=torch.long), 1),
    ("dtype torch.bool", lambda: torch.zeros(1, 3, 16, 16, dtype=torch.bool), 1),
    (r"\[0, 1\]", lambda: torch.rand(1, 3, 16, 16) * 2, 1),
    (r"\[0, 1\]", lambda: torch.rand(1, 3, 16, 16) * 2 - 1, 1),
    ("NaN", lambda: torch.full((1, 3, 16, 16), float("nan")), 1),
    ("2 images but 1 prompts", lambda: torch.rand(2, 3, 16, 16), 1),
]


@pytest.mark.parametrize("match,make,n_prompts", BAD_INPUTS)
def test_bad_images(rewards, match, make, n_prompts):
    for r in rewards:
        with pytest.raises(RewardError, match=match) as e:
            r.score(make(), ['a "sign"'] * n_prompts, [{}] * n_prompts)
        assert f"reward '{r.name}'" in str(e.value)


def test_bad_prompts_and_metadata(rewards):
    x = torch.rand(2, 3, 16, 16)
    for r in rewards:
        with pytest.raises(RewardError, match=f"'{r.name}'.*single string"):
            r.score(x, "ab", [{}, {}])
        with pytest.raises(RewardError, match=f"'{r.name}'.*prompt 1 must be a string"):
            r.score(x, ["a", None], [{}, {}])
        with pytest.raises(RewardError, match=f"'{r.name}'.*2 images but 3 metadata"):
            r.score(x, ["a", "b"], [{}, {}, {}])


# ---------------------------------------------------------------------- non-finite scores
def test_nan_scores_raise(ckpts, build, tmp_path):
    from marble_rewards.testing import make_aesthetic_mlp

    path = make_aesthetic_mlp(tmp_path / "nan.pth")
    state = torch.load(path, weights_only=True)
    state["layers.7.bias"][:] = float("nan")
    torch.save(state, path)
    reward = build("aesthetic", **{**ckpts["aesthetic"], "mlp_path": path})
    with pytest.raises(RewardError, match="'aesthetic'.*non-finite scores.*samples \\[0, 1\\]"):
        reward.score(torch.rand(2, 3, 32, 32), ["a", "b"], [{}, {}])
