"""The flux / flux-tiny backbone of plugins/diffusers, checked against diffusers' FluxPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marble import BackboneError
from marble.testing._backbone_checks import check_backbone

PROMPTS = ["a red cube", "two cats on a sofa"]


def _inputs(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = bb._pack(torch.randn(bb._noise_shape(n), generator=g, dtype=torch.float64)).to(bb.state_dtype)
    t = torch.tensor([0.3, 0.8][:n], dtype=bb.state_dtype)
    return x, t


def _transformer_call(bb, transformer, x, t, cond):
    txt_ids, img_ids = bb._position_ids(cond["prompt_embeds"].shape[1])
    return transformer(
        hidden_states=x,
        timestep=t,
        guidance=torch.full((x.shape[0],), 3.5),
        pooled_projections=cond["pooled_prompt_embeds"],
        encoder_hidden_states=cond["prompt_embeds"],
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]


def test_check_backbone_flux_tiny(flux):
    check_backbone(flux)


def test_packed_latents_and_dynamic_shift(flux):
    cond = flux.encode_prompts(PROMPTS)
    r = flux.sample(cond, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert r.latents.shape == (2, 16, 64)  # (64/8/2)^2 tokens of 16 channels x 2 x 2
    z = torch.randn(2, 16, 8, 8)
    assert torch.equal(flux._unpack(flux._pack(z)), z)
    # FLUX.1-dev: mu = 0.5 + (1.15 - 0.5) * (16 - 256) / (4096 - 256), t' = e^mu / (e^mu + 1/t - 1)
    mu = 0.5 + 0.65 * (16 - 256) / 3840
    u = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(r.timesteps.double(), np.exp(mu) / (np.exp(mu) + 1 / u - 1), atol=1e-7)


@pytest.mark.parametrize("true_cfg", [1.0, 2.5])
def test_sample_equals_diffusers_flux_pipeline(flux, true_cfg):
    """Euler sampling of the reference == FluxPipeline (distilled guidance 3.5 through the
    guidance embedding, the model's own shift, true CFG with the empty negative prompt)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(flux.model_path)
    steps = 5
    cond = flux.encode_prompts(PROMPTS)
    r = flux.sample(cond, num_steps=steps, generator=torch.Generator().manual_seed(2), adapter="reference",
                    guidance_scale=true_cfg)
    noise = torch.randn(flux._noise_shape(2), generator=torch.Generator().manual_seed(2))
    kw = dict(prompt=PROMPTS, latents=flux._pack(noise), num_inference_steps=steps, guidance_scale=3.5,
              max_sequence_length=32, height=64, width=64)
    if true_cfg > 1:
        kw.update(negative_prompt=["", ""], true_cfg_scale=true_cfg)
    latents = pipe(**kw, output_type="latent").images
    assert torch.allclose(r.latents, latents, atol=2e-5), (r.latents - latents).abs().max()
    assert torch.allclose(r.timesteps, pipe.scheduler.sigmas[:-1], atol=1e-6)
    images = pipe(**kw, output_type="pt").images
    assert torch.allclose(r.images, images, atol=1e-4)


def test_reference_is_the_base_transformer(flux, perturb):
    from diffusers import FluxTransformer2DModel

    perturb(flux, 0.3)
    fresh = FluxTransformer2DModel.from_pretrained(flux.model_path, subfolder="transformer").eval()
    cond = flux.encode_prompts(PROMPTS)
    x, t = _inputs(flux)
    with torch.no_grad():
        v_fresh = _transformer_call(flux, fresh, x, t, cond)
        assert torch.allclose(flux.velocity(x, t, cond, "reference"), v_fresh, atol=1e-6)
        assert not torch.allclose(flux.velocity(x, t, cond, "trained"), v_fresh, atol=1e-3)


def test_saved_lora_loads_in_plain_flux_pipeline(flux, perturb, tmp_path):
    from diffusers import FluxPipeline

    perturb(flux, 0.2)
    flux.save_lora(str(tmp_path / "lora"))
    pipe = FluxPipeline.from_pretrained(flux.model_path)
    cond = flux.encode_prompts(PROMPTS)
    x, t = _inputs(flux)
    with torch.no_grad():
        base = _transformer_call(flux, pipe.transformer, x, t, cond)
        pipe.load_lora_weights(str(tmp_path / "lora"))
        config = next(iter(pipe.transformer.peft_config.values()))
        assert (config.r, config.lora_alpha) == (4, 8)
        lora = _transformer_call(flux, pipe.transformer, x, t, cond)
        mine = flux.velocity(x, t, cond, "trained")
    assert not torch.allclose(lora, base, atol=1e-3)
    assert torch.allclose(lora, mine, atol=1e-6), (lora - mine).abs().max()


def test_flux_float64(tiny_cache):
    from marble_diffusers import FluxBackbone, FluxTinyArgs

    bb = FluxBackbone(FluxTinyArgs(dtype="fp64"))
    cond = bb.encode_prompts(PROMPTS)
    x, t = _inputs(bb)
    assert bb.velocity(x, t, cond).dtype == torch.float64
    check_backbone(bb, num_steps=2, samplers=("dpm2",))


def test_flux_errors(tiny_cache, tmp_path):
    from marble_diffusers import FluxBackbone, FluxTinyArgs, tiny_sd3_path

    with pytest.raises(BackboneError, match="StableDiffusion3Pipeline.*backbone 'sd3'"):
        FluxBackbone(FluxTinyArgs(model=str(tiny_sd3_path())))
    with pytest.raises(BackboneError, match="divisible by 16"):
        FluxBackbone(FluxTinyArgs(resolution=56))
    with pytest.raises(BackboneError, match="max_sequence_length"):
        FluxBackbone(FluxTinyArgs(max_sequence_length=1000))
    with pytest.raises(BackboneError, match="does not exist"):
        FluxBackbone(FluxTinyArgs(model=str(tmp_path / "missing")))
