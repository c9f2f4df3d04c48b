"""The packaged model through the `sd3` backbone of marble-diffusers (the `world-sd3` alias)."""

from pathlib import Path

import torch

from marble_world.config import world_backbone_args, world_model_path

import marble_diffusers  # noqa: E402,F401


def test_world_sd3_backbone_samples_and_trains():
    from marble_world.backbone import build
    from marble_world.plugin import marble_register_backbones

    (spec,) = marble_register_backbones()
    assert spec.name == "world-sd3" and spec.args is world_backbone_args()
    bb = build(spec.args())
    assert Path(bb.model_path).resolve() == Path(world_model_path()).resolve()
    cond = bb.encode_prompts(["two red circles on the left", 'a sign that says "cat"'])
    ro = bb.sample(cond, num_steps=4, generator=torch.Generator().manual_seed(0), adapter="old")
    assert ro.images.shape == (2, 3, 64, 64)
    assert 0.0 <= float(ro.images.min()) and float(ro.images.max()) <= 1.0
    params = bb.trainable_parameters()
    assert params and all(p.requires_grad for p in params)
    t = torch.full((2,), 0.5)
    v = bb.velocity(ro.latents, t, cond, adapter="trained")
    v.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
