"""PickScore, CLIPScore and the aesthetic predictor against independent references written
with plain transformers / torch calls (the way the reward authors' READMEs score), on tiny
random checkpoints saved in the real formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import CLIPModel, CLIPProcessor

PROMPTS = [
    'a cat holding a sign that says "hello"',
    "a photograph of an astronaut riding a horse on the moon, highly detailed, 8k",
    "",
    "a red cube on top of a blue sphere",
    "Ünïcode prompt ✓ with an emoji 🐱 and punctuation!!",
    "a " + "very " * 100 + "long prompt that must be truncated to 77 tokens",
]


def _feat(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def reference_clip_embeds(model_dir, proc_dir, images, prompts, *, pil: bool):
    """Normalized image/text features computed the plain way: CLIPProcessor + CLIPModel."""
    proc = CLIPProcessor.from_pretrained(proc_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        if pil:  # the PickScore README way: PIL uint8 images, default rescale by 1/255
            pil_images = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
            pix = proc(images=pil_images, return_tensors="pt")
        else:  # floats in [0, 1]: rescaling must be off
            pix = proc(images=list(images), do_rescale=False, return_tensors="pt")
        txt = proc(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        ie = _feat(model.get_image_features(pixel_values=pix["pixel_values"]))
        te = _feat(model.get_text_features(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"]))
    ie = ie / ie.norm(dim=-1, keepdim=True)
    te = te / te.norm(dim=-1, keepdim=True)
    return model, ie, te


class ReferenceAestheticMLP(nn.Module):
    """The improved-aesthetic-predictor MLP as its repository defines it."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_pickscore_matches_reference(ckpts, build, size, qimages):
    a = ckpts["pickscore"]
    images = qimages(len(PROMPTS), *size)
    model, ie, te = reference_clip_embeds(a["model"], a["processor"], images, PROMPTS, pil=False)
    ref = model.logit_scale.exp() * torch.diagonal(ie @ te.T)  # the reference's N x N way
    raw = build("pickscore", **a, scale=1.0, batch_size=4).score(images, PROMPTS, [{}] * len(PROMPTS))
    assert raw.mask is None and raw.scores.dtype == torch.float32 and raw.scores.shape == (len(PROMPTS),)
    torch.testing.assert_close(raw.scores, ref.float(), atol=1e-5, rtol=0)
    assert raw.scores.std() > 1e-3  # the check is not vacuous: images/prompts score differently
    default = build("pickscore", **a).score(images, PROMPTS, [{}] * len(PROMPTS))  # scale 1/26
    torch.testing.assert_close(default.scores, ref.float() / 26, atol=1e-5, rtol=0)


def test_pickscore_uint8_pil_path(ckpts, build, qimages):
    """uint8 input = the float input exactly; and at 224 px (no resize) the PIL/uint8 reference
    of the PickScore README gives the same numbers."""
    a = ckpts["pickscore"]
    images = qimages(4, 224, 224, seed=3)
    prompts = PROMPTS[:4]
    reward = build("pickscore", **a, scale=1.0)
    f = reward.score(images, prompts, [{}] * 4).scores
    u = reward.score((images * 255).round().to(torch.uint8), prompts, [{}] * 4).scores
    assert torch.equal(f, u)
    model, ie, te = reference_clip_embeds(a["model"], a["processor"], images, prompts, pil=True)
    torch.testing.assert_close(f, (model.logit_scale.exp() * (ie * te).sum(-1)).float(), atol=1e-5, rtol=0)


def test_clipscore_matches_reference(ckpts, build, qimages):
    a = ckpts["clipscore"]
    images = qimages(len(PROMPTS), 240, 200, seed=1)
    model, _, _ = reference_clip_embeds(a["model"], a["processor"], images[:1], PROMPTS[:1], pil=False)
    proc = CLIPProcessor.from_pretrained(a["processor"])
    with torch.no_grad():  # logits_per_image / logit_scale = cosine
        inputs = proc(text=PROMPTS, images=list(images), do_rescale=False, padding=True, truncation=True,
                      max_length=77, return_tensors="pt")
        out = model(**inputs)
    ref = torch.diagonal(out.logits_per_image) / model.logit_scale.exp()
    reward = build("clipscore", **a, batch_size=5)
    got = reward.score(images, PROMPTS, [{}] * len(PROMPTS))
    torch.testing.assert_close(got.scores, ref.float(), atol=1e-5, rtol=0)
    u = reward.score((images * 255).round().to(torch.uint8), PROMPTS, [{}] * len(PROMPTS))
    assert torch.equal(got.scores, u.scores)


def test_aesthetic_matches_reference(ckpts, build, qimages):
    a = ckpts["aesthetic"]
    images = qimages(5, 256, 256, seed=2)
    proc = CLIPProcessor.from_pretrained(a["processor"])
    model = CLIPModel.from_pretrained(a["clip_model"]).eval()
    mlp = ReferenceAestheticMLP()
    mlp.load_state_dict(torch.load(a["mlp_path"], map_location="cpu", weights_only=True))
    mlp.eval()
    with torch.no_grad():
        pix = proc(images=list(images), do_rescale=False, return_tensors="pt")
        emb = _feat(model.get_image_features(**pix))
        emb = emb / torch.linalg.vector_norm(emb, dim=-1, keepdim=True)
        ref = mlp(emb).squeeze(1)
    reward = build("aesthetic", **a, batch_size=2)
    got = reward.score(images, ["unused"] * 5, [{}] * 5)
    torch.testing.assert_close(got.scores, ref, atol=1e-5, rtol=0)
    u = reward.score((images * 255).round().to(torch.uint8), ["unused"] * 5, [{}] * 5)
    assert torch.equal(got.scores, u.scores)


def test_clip_model_loaded_once_for_clipscore_and_aesthetic(ckpts, build):
    from marble_rewards import _clip

    assert ckpts["clipscore"]["model"] == ckpts["aesthetic"]["clip_model"]
    _clip.clear_cache()
    cs = build("clipscore", **ckpts["clipscore"])
    ae = build("aesthetic", **ckpts["aesthetic"])
    assert cs.model is ae.model and cs.processor is ae.processor
    assert len(_clip.cached_models()) == 1
    # another dtype is another entry
    other = build("clipscore", **ckpts["clipscore"], dtype="fp64")
    assert other.model is not cs.model and other.model.dtype == torch.float64
    assert len(_clip.cached_models()) == 2


def test_scores_do_not_depend_on_batch_size(ckpts, build, qimages):
    images = qimages(5, 224, 224, seed=4)
    prompts = PROMPTS[:5]
    a = build("pickscore", **ckpts["pickscore"], batch_size=5).score(images, prompts, [{}] * 5).scores
    b = build("pickscore", **ckpts["pickscore"], batch_size=2).score(images, prompts, [{}] * 5).scores
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_bf16_runs_close_to_fp32(ckpts, build, qimages):
    images = qimages(3, 224, 224, seed=5)
    f32 = build("clipscore", **ckpts["clipscore"]).score(images, PROMPTS[:3], [{}] * 3).scores
    bf = build("clipscore", **ckpts["clipscore"], dtype="bf16").score(images, PROMPTS[:3], [{}] * 3)
    assert bf.scores.dtype == torch.float32
    torch.testing.assert_close(bf.scores, f32, atol=3e-2, rtol=0)


def test_conformance_checks(ckpts, build):
    from marble.testing import check_reward

    for name in ("pickscore", "clipscore", "aesthetic"):
        check_reward(build(name, **ckpts[name]))


def test_tiny_checkpoints_have_the_real_key_names(ckpts):
    """The tiny CLIP folders hold the same state-dict keys as the real architectures (modulo the
    number of layers), so the real loading code is what the tests exercise."""
    import re

    from safetensors import safe_open
    from transformers import CLIPConfig

    from marble_rewards import testing as T

    def pattern(keys):
        return {re.sub(r"\.layers\.\d+\.", ".layers.N.", k) for k in keys}

    for name, (text, vision, proj), folder in [
        ("pickscore", (T.VIT_H14_TEXT, T.VIT_H14_VISION, 1024), ckpts["pickscore"]["model"]),
        ("clipscore", (T.VIT_L14_TEXT, T.VIT_L14_VISION, 768), ckpts["clipscore"]["model"]),
    ]:
        with torch.device("meta"):
            real = CLIPModel(T.clip_config(text, vision, proj))
        with safe_open(f"{folder}/model.safetensors", "pt") as f:
            saved = set(f.keys())
        expected = {k for k in real.state_dict() if not k.endswith("position_ids")}
        assert pattern(saved) - {k for k in pattern(saved) if k.endswith("position_ids")} == pattern(expected), name
    # CLIPScore's stand-in feeds the aesthetic MLP: it must have ViT-L/14's 768-d embedding
    assert CLIPConfig.from_pretrained(ckpts["clipscore"]["model"]).projection_dim == 768


def test_pickscore_logit_scale_is_not_rounded_in_bf16(ckpts, build, qimages):
    """exp(logit_scale) comes from the fp32 checkpoint value even when the model runs in bf16
    (bf16 would turn 100 into 98.9 - a 1 % scale error on every score)."""
    reward = build("pickscore", **ckpts["pickscore"], dtype="bf16", scale=1.0)
    assert reward.model.logit_scale.dtype == torch.bfloat16
    assert reward.model.marble_logit_scale == pytest.approx(100.0, rel=1e-4)
    images = qimages(2, 224, 224, seed=9)
    f32 = build("pickscore", **ckpts["pickscore"], scale=1.0).score(images, PROMPTS[:2], [{}] * 2).scores
    bf = reward.score(images, PROMPTS[:2], [{}] * 2).scores
    torch.testing.assert_close(bf, f32, atol=0.05 * f32.abs().max().item() + 0.05, rtol=0)
