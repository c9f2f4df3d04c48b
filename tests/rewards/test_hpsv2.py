"""HPSv2.1 against an independent plain-open_clip reference: the model built by name from its
config, the checkpoint's ``state_dict`` loaded, open_clip's own eval transform (resize the
longest side, pad, normalize) applied to PIL images one by one, features from model(...)."""

from __future__ import annotations

import json
import re

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

PROMPTS = [
    'a cat holding a sign that says "hello"',
    "an oil painting of a lighthouse in a storm",
    "",
    "a " + "very " * 100 + "long prompt",
]


@pytest.fixture(scope="module")
def reference(ckpts):
    a = ckpts["hpsv2"]
    open_clip.add_model_config(a["model"])  # registers the tiny config under its file stem
    name = a["model"].rsplit("/", 1)[-1][: -len(".json")]
    model = open_clip.create_model(name, pretrained=None, output_dict=True)  # as HPSv2 does
    state = torch.load(a["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    transform = open_clip.image_transform(model.visual.image_size, is_train=False, resize_mode="longest",
                                          mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(name)

    def score(images, prompts):
        pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
        with torch.no_grad():
            out = model(torch.stack([transform(p) for p in pil]), tokenizer(prompts))
        return torch.diagonal(out["image_features"] @ out["text_features"].T)

    return score


@pytest.mark.parametrize("size", [(224, 224), (224, 160), (150, 224)])
def test_hpsv2_matches_open_clip(ckpts, build, reference, size, qimages):
    """No resampling needed (longest side already 224): must agree to float precision."""
    images = qimages(len(PROMPTS), *size, seed=7)
    reward = build("hpsv2", **ckpts["hpsv2"], batch_size=3)
    got = reward.score(images, PROMPTS, [{}] * len(PROMPTS))
    assert got.mask is None and got.scores.dtype == torch.float32
    torch.testing.assert_close(got.scores, reference(images, PROMPTS), atol=1e-5, rtol=0)
    assert got.scores.std() > 1e-3
    u8 = reward.score((images * 255).round().to(torch.uint8), PROMPTS, [{}] * len(PROMPTS))
    assert torch.equal(got.scores, u8.scores)


def test_hpsv2_resize_close_to_pil_resize(ckpts, build, reference, qimages):
    """512 px and 448 x 320 inputs are resized: bicubic on tensors vs PIL's bicubic on uint8
    differ by rounding only."""
    for h, w in [(512, 512), (448, 320)]:
        images = qimages(len(PROMPTS), h, w, seed=8)
        got = build("hpsv2", **ckpts["hpsv2"]).score(images, PROMPTS, [{}] * len(PROMPTS)).scores
        ref = reference(images, PROMPTS)
        assert (got - ref).abs().max() < 2e-4, (h, w, got, ref)  # measured: 2.5e-5


def test_hpsv2_tiny_config_has_vit_h14_structure(ckpts):
    """Same state-dict key names as the real ViT-H-14 (modulo the number of blocks)."""
    with torch.device("meta"):
        real = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    tiny = torch.load(ckpts["hpsv2"]["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]

    def pattern(keys):
        return {re.sub(r"resblocks\.\d+\.", "resblocks.N.", k) for k in keys}

    assert pattern(tiny) == pattern(real.state_dict())
    cfg = json.load(open(ckpts["hpsv2"]["model"]))
    assert set(cfg) == set(open_clip.get_model_config("ViT-H-14"))


def test_hpsv2_conformance(ckpts, build):
    from marble.testing import check_reward

    check_reward(build("hpsv2", **ckpts["hpsv2"]))
