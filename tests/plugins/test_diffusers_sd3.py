"""The sd3 / sd3-tiny backbone of plugins/diffusers, checked against diffusers itself."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from marble import BackboneError
from marble.testing._backbone_checks import check_backbone

PROMPTS = ["a red cube", "two cats on a sofa"]


def _inputs(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bb._noise_shape(n), generator=g, dtype=torch.float64).to(bb.state_dtype)
    t = torch.tensor([0.3, 0.8, 0.55, 0.1][:n], dtype=bb.state_dtype)
    return x, t


def _transformer_call(transformer, x, t, cond):
    return transformer(
        hidden_states=x,
        timestep=t * 1000,
        encoder_hidden_states=cond["prompt_embeds"],
        pooled_projections=cond["pooled_prompt_embeds"],
        return_dict=False,
    )[0]


# --------------------------------------------------------------------------- the contract
def test_check_backbone_sd3_tiny(sd3):
    check_backbone(sd3)


def test_check_backbone_sd3_tiny_float64(sd3_64):
    assert sd3_64.dtype == torch.float64
    check_backbone(sd3_64)
    cond = sd3_64.encode_prompts(PROMPTS)
    assert all(v.dtype == torch.float64 for v in cond.values())
    x, t = _inputs(sd3_64)
    assert sd3_64.velocity(x, t, cond).dtype == torch.float64
    r = sd3_64.sample(cond, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.latents.dtype == torch.float64 and r.timesteps.dtype == torch.float64


def test_rollout_fields_and_time_grid(sd3):
    cond = sd3.encode_prompts(PROMPTS)
    r = sd3.sample(cond, num_steps=10, generator=torch.Generator().manual_seed(0))
    assert r.latents.shape == (2, 16, 8, 8)
    assert r.images.shape == (2, 3, 64, 64)
    # SD3's shift 3 on the uniform grid 1, 0.9, ..., 0.1: t' = 3t / (1 + 2t)
    u = torch.linspace(1, 0.1, 10, dtype=torch.float64)
    assert torch.allclose(r.timesteps.double(), 3 * u / (1 + 2 * u), atol=1e-7)


# --------------------------------------------------------------------------- against diffusers
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sample_equals_diffusers_pipeline(sd3, guidance_scale):
    """The reference adapter's Euler sample is what StableDiffusion3Pipeline produces from the
    same initial noise on the same (shifted uniform) grid, CFG with the empty negative prompt."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3.model_path)
    steps = 6
    cond = sd3.encode_prompts(PROMPTS)
    r = sd3.sample(cond, num_steps=steps, generator=torch.Generator().manual_seed(5),
                   adapter="reference", guidance_scale=guidance_scale)
    noise = torch.randn(sd3._noise_shape(2), generator=torch.Generator().manual_seed(5))
    kw = dict(prompt=PROMPTS, latents=noise, num_inference_steps=steps, sigmas=list(np.linspace(1.0, 1 / steps, steps)),
              guidance_scale=guidance_scale, max_sequence_length=32, height=64, width=64)
    latents = pipe(**kw, output_type="latent").images
    assert torch.allclose(r.latents, latents, atol=2e-5), (r.latents - latents).abs().max()
    assert torch.allclose(r.timesteps, pipe.scheduler.sigmas[:-1], atol=1e-6)
    images = pipe(**kw, output_type="pt").images
    assert torch.allclose(r.images, images, atol=1e-4)


def test_reference_is_the_base_transformer(sd3, perturb):
    """Adapters disabled == a freshly loaded transformer without any LoRA, whatever the adapters hold."""
    from diffusers import SD3Transformer2DModel

    perturb(sd3, 0.3)
    sd3.soft_update_old(0.5)
    fresh = SD3Transformer2DModel.from_pretrained(sd3.model_path, subfolder="transformer").eval()
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    with torch.no_grad():
        v_fresh = _transformer_call(fresh, x, t, cond)
        v_ref = sd3.velocity(x, t, cond, "reference")
        v_tr = sd3.velocity(x, t, cond, "trained")
        v_old = sd3.velocity(x, t, cond, "old")
    assert torch.allclose(v_ref, v_fresh, atol=1e-6)
    assert not torch.allclose(v_tr, v_fresh, atol=1e-3)
    assert not torch.allclose(v_old, v_tr, atol=1e-3)


def test_saved_lora_loads_in_plain_pipeline_with_alpha(sd3, perturb, tmp_path):
    """save_lora -> StableDiffusion3Pipeline.load_lora_weights reproduces the trained adapter
    exactly (rank 4, alpha 8: scaling 2, which is lost if the metadata is not written)."""
    from diffusers import StableDiffusion3Pipeline

    perturb(sd3, 0.2)
    out = tmp_path / "lora"
    sd3.save_lora(str(out))
    assert (out / "pytorch_lora_weights.safetensors").is_file()

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3.model_path)
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    with torch.no_grad():
        base = _transformer_call(pipe.transformer, x, t, cond)
        pipe.load_lora_weights(str(out))
        config = next(iter(pipe.transformer.peft_config.values()))
        assert (config.r, config.lora_alpha) == (4, 8)
        lora = _transformer_call(pipe.transformer, x, t, cond)
        mine = sd3.velocity(x, t, cond, "trained")
    assert not torch.allclose(lora, base, atol=1e-3)
    assert torch.allclose(lora, mine, atol=1e-6), (lora - mine).abs().max()

    # the whole pipeline's images change, and equal the backbone's trained-adapter samples
    noise = torch.randn(sd3._noise_shape(2), generator=torch.Generator().manual_seed(1))
    kw = dict(prompt=PROMPTS, latents=noise, num_inference_steps=4, sigmas=list(np.linspace(1, 0.25, 4)),
              guidance_scale=1.0, max_sequence_length=32, height=64, width=64, output_type="latent")
    with_lora = pipe(**kw).images
    pipe.disable_lora()
    without = pipe(**kw).images
    assert not torch.allclose(with_lora, without, atol=1e-3)
    r = sd3.sample(cond, num_steps=4, generator=torch.Generator().manual_seed(1), adapter="trained")
    assert torch.allclose(r.latents, with_lora, atol=2e-5)


# --------------------------------------------------------------------------- adapters
def test_old_untouched_by_optimizer_step(sd3):
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    old_before = sd3.adapter_state("old")
    trained_before = sd3.adapter_state("trained")
    with torch.no_grad():
        v_old_before = sd3.velocity(x, t, cond, "old")
        v_ref_before = sd3.velocity(x, t, cond, "reference")
    opt = torch.optim.AdamW(sd3.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        with torch.no_grad():
            v_old = sd3.velocity(x, t, cond, "old")
        loss = (sd3.velocity(x, t, cond, "trained") - v_old - 1.0).square().mean()
        loss.backward()
        frozen = [n for n, p in sd3.transformer.named_parameters()
                  if p.grad is not None and all(p is not q for q in sd3.trainable_parameters())]
        assert frozen == []
        opt.step()
    old_after, trained_after = sd3.adapter_state("old"), sd3.adapter_state("trained")
    assert all(torch.equal(old_after[k], old_before[k]) for k in old_before)
    assert any(not torch.equal(trained_after[k], trained_before[k]) for k in trained_before)
    with torch.no_grad():
        assert torch.equal(sd3.velocity(x, t, cond, "old"), v_old_before)
        assert torch.equal(sd3.velocity(x, t, cond, "reference"), v_ref_before)
        assert not torch.allclose(sd3.velocity(x, t, cond, "trained"), v_old_before, atol=1e-4)


def test_adapter_switching_never_changes_requires_grad(sd3):
    """peft's set_adapter/enable_adapters flip requires_grad; the backbone must undo that."""
    flags = {n: p.requires_grad for n, p in sd3.transformer.named_parameters()}
    trainable = {id(p) for p in sd3.trainable_parameters()}
    assert {n for n, f in flags.items() if f} == {n for n, p in sd3.transformer.named_parameters() if id(p) in trainable}
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    for adapter in ["old", "reference", "trained", "old", "reference", "old"]:
        sd3.velocity(x, t, cond, adapter)  # grad mode on, as a careless caller would
        assert {n: p.requires_grad for n, p in sd3.transformer.named_parameters()} == flags
    sd3.velocity(x, t, cond, "trained").square().mean().backward()
    for n, p in sd3.transformer.named_parameters():
        assert (p.grad is not None) == (id(p) in trainable), n


def test_soft_update_exact_float64(sd3_64, perturb):
    perturb(sd3_64, 0.1, seed=1)
    old, tr = sd3_64.adapter_state("old"), sd3_64.adapter_state("trained")
    sd3_64.soft_update_old(0.3)
    mixed = sd3_64.adapter_state("old")
    for k in old:
        expect = 0.3 * old[k] + 0.7 * tr[k]
        assert torch.allclose(mixed[k], expect, rtol=1e-15, atol=1e-15), k
    sd3_64.soft_update_old(1.0)
    assert all(torch.equal(sd3_64.adapter_state("old")[k], mixed[k]) for k in mixed)
    sd3_64.soft_update_old(0.0)
    assert all(torch.equal(sd3_64.adapter_state("old")[k], tr[k]) for k in tr)
    with pytest.raises(BackboneError):
        sd3_64.soft_update_old(1.5)


def test_adapter_state_round_trip_and_shape_errors(sd3, perturb):
    perturb(sd3, 0.1)
    st = sd3.adapter_state("trained")
    assert all(v.device.type == "cpu" for v in st.values())
    sd3.load_adapter_state("old", st)
    assert all(torch.equal(sd3.adapter_state("old")[k], st[k]) for k in st)
    bad = dict(st)
    bad.pop(next(iter(bad)))
    with pytest.raises(BackboneError, match="missing"):
        sd3.load_adapter_state("trained", bad)
    with pytest.raises(BackboneError, match="reference"):
        sd3.adapter_state("reference")


# --------------------------------------------------------------------------- samplers
def test_sampler_orders_on_an_analytic_field(sd3_64, monkeypatch):
    """With v(x, t) = x cos(3t) the ODE has x(0) = x(1) exp(-sin(3) / 3): Euler converges at
    first order (error halves when steps double), the midpoint sampler at second order."""
    monkeypatch.setattr(sd3_64, "_forward", lambda model, x, t, cond: x * torch.cos(3 * t).view(-1, 1, 1, 1))
    cond = sd3_64.encode_prompts(PROMPTS)
    x1 = torch.randn(sd3_64._noise_shape(2), generator=torch.Generator().manual_seed(0)).double()
    exact = x1 * np.exp(-np.sin(3.0) / 3.0)

    def err(steps, sampler):
        g = torch.Generator().manual_seed(0)
        return float((sd3_64.sample(cond, num_steps=steps, generator=g, sampler=sampler).latents - exact).abs().max())

    e = {s: [err(n, s) for n in (8, 16, 32)] for s in ("euler", "dpm2")}
    for a, b in zip(e["euler"], e["euler"][1:]):
        assert 1.6 < a / b < 2.5, e
    for a, b in zip(e["dpm2"], e["dpm2"][1:]):
        assert 3.2 < a / b < 5.0, e
    assert e["dpm2"][-1] < e["euler"][-1] / 10


# --------------------------------------------------------------------------- tiny folders
def _tensors(folder):
    from safetensors.torch import load_file

    out = {}
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                for k, v in load_file(os.path.join(root, f)).items():
                    out[os.path.relpath(os.path.join(root, f), folder) + ":" + k] = v
    return out


def test_tiny_build_is_seeded_and_deterministic(tmp_path):
    from marble_diffusers import build_tiny_sd3

    a, b, c = (_tensors(build_tiny_sd3(tmp_path / n, seed=s)) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert a.keys() == b.keys() == c.keys() and len(a) > 50
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(not torch.equal(a[k], c[k]) for k in a) > len(a) // 2
    for tok in ("tokenizer", "tokenizer_3"):
        assert (tmp_path / "a" / tok / "tokenizer.json").read_text() == (tmp_path / "b" / tok / "tokenizer.json").read_text()
    marker = json.loads((tmp_path / "a" / "marble_tiny.json").read_text())
    assert marker["kind"] == "sd3" and marker["seed"] == 0


def test_tiny_folder_reloads_identical(sd3):
    """The cached tiny folder is reused, and loading it twice gives the same weights and images."""
    from diffusers import StableDiffusion3Pipeline
    from marble_diffusers import tiny_sd3_path

    folder = tiny_sd3_path()
    assert str(folder) == sd3.model_path and tiny_sd3_path() == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    files = _tensors(folder)
    p1 = StableDiffusion3Pipeline.from_pretrained(folder)
    p2 = StableDiffusion3Pipeline.from_pretrained(folder)
    for name, module in (("transformer", p1.transformer), ("vae", p1.vae), ("text_encoder_3", p1.text_encoder_3)):
        for k, v in module.state_dict().items():
            key = next((f for f in files if f.startswith(name + os.sep) and f.endswith(":" + k)), None)
            if key is not None:
                assert torch.equal(v, files[key]), (name, k)
    kw = dict(prompt="a red cube", num_inference_steps=3, height=64, width=64, max_sequence_length=32, output_type="pt")
    im1 = p1(**kw, generator=torch.Generator().manual_seed(0)).images
    im2 = p2(**kw, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(im1, im2)


def test_tiny_cache_replaces_incomplete_folder(tiny_cache):
    from marble_diffusers import tiny_sd3_path

    folder = tiny_sd3_path(seed=3)
    shutil.rmtree(folder / "vae")
    (folder / "marble_tiny.json").unlink()  # as if a build had been killed before completing
    again = tiny_sd3_path(seed=3)
    assert again == folder and (folder / "vae").is_dir() and (folder / "marble_tiny.json").is_file()


# --------------------------------------------------------------------------- options
def test_prompt_cache_and_freed_encoders(tiny_cache):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    bb = SD3Backbone(SD3TinyArgs(prompt_cache_size=2))
    a = bb.encode_prompts(PROMPTS)
    b = bb.encode_prompts(list(reversed(PROMPTS)))
    assert torch.equal(a["prompt_embeds"][0], b["prompt_embeds"][1])
    bb.encode_prompts(["x", "y", "z"])
    assert len(bb._cache) <= 2
    bb.cache_prompts(PROMPTS, free_encoders=True)
    assert bb.pipe.text_encoder is None and bb.pipe.text_encoder_3 is None
    c = bb.encode_prompts(PROMPTS + [""])
    assert torch.equal(c["prompt_embeds"][:2], a["prompt_embeds"])
    bb.sample(c, num_steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=2.0)
    with pytest.raises(BackboneError, match="cache_prompts"):
        bb.encode_prompts(["never seen"])


def test_drop_t5(tiny_cache):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    bb = SD3Backbone(SD3TinyArgs(drop_t5=True))
    assert bb.pipe.text_encoder_3 is None
    cond = bb.encode_prompts(PROMPTS)
    clip_tokens = bb.pipe.tokenizer.model_max_length
    assert cond["prompt_embeds"].shape[1] == clip_tokens + 32
    assert torch.count_nonzero(cond["prompt_embeds"][:, clip_tokens:]) == 0
    assert torch.count_nonzero(cond["prompt_embeds"][:, :clip_tokens]) > 0


def test_gradient_checkpointing_gives_the_same_gradients(sd3, tiny_cache):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    gc = SD3Backbone(SD3TinyArgs(gradient_checkpointing=True))
    assert gc.transformer.is_gradient_checkpointing
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    grads = []
    state = {k: v + 0.01 for k, v in sd3.adapter_state("trained").items()}
    for bb in (sd3, gc):
        bb.load_adapter_state("trained", state)
        bb.velocity(x, t, cond, "trained").square().mean().backward()
        grads.append([p.grad.clone() for p in bb.trainable_parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_full_finetune(tiny_cache, tmp_path):
    from diffusers import SD3Transformer2DModel
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    bb = SD3Backbone(SD3TinyArgs(full_finetune=True))
    assert len(bb.trainable_parameters()) == len(list(bb.transformer.parameters()))
    check_backbone(bb)
    bb.save_lora(str(tmp_path / "full"))
    back = SD3Transformer2DModel.from_pretrained(tmp_path / "full", subfolder="transformer")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), bb.transformer.state_dict().values()))


# --------------------------------------------------------------------------- errors
def _raises(match, **kw):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    with pytest.raises(BackboneError) as info:
        SD3Backbone(SD3TinyArgs(**kw))
    msg = str(info.value)
    assert "backbone 'sd3" in msg and "Fix:" in msg, msg
    for m in [match] if isinstance(match, str) else match:
        assert m in msg, msg
    return msg


def test_error_missing_folder(tmp_path):
    _raises([str(tmp_path / "nope"), "does not exist"], model=str(tmp_path / "nope"))


def test_error_not_a_pipeline_folder(tmp_path):
    _raises([str(tmp_path), "model_index.json"], model=str(tmp_path))


def test_error_incomplete_folder(tmp_path, tiny_cache):
    from marble_diffusers import tiny_sd3_path

    broken = tmp_path / "sd3"
    shutil.copytree(tiny_sd3_path(), broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    shutil.rmtree(broken / "tokenizer_2")
    _raises(["incomplete", "transformer/ weights", "tokenizer_2/", str(broken)], model=str(broken))
    # dropping T5 makes its absence fine
    shutil.rmtree(broken / "text_encoder_3")
    _raises(["transformer/ weights"], model=str(broken), drop_t5=True)


def test_error_wrong_architecture(tiny_cache):
    from marble_diffusers import tiny_flux_path

    _raises(["FluxPipeline", "backbone 'flux'"], model=str(tiny_flux_path()))


@pytest.mark.parametrize("res, hint", [(72, "divisible by 16"), (40, "divisible by 16"), (512, "at most 256")])
def test_error_resolution(res, hint, tiny_cache):
    _raises([str(res), hint], resolution=res)


def test_error_lora_target(tiny_cache):
    msg = _raises(["attn.to_qq", "match no linear layer"], lora_targets=["attn.to_q", "attn.to_qq"])
    assert "attn.to_k" in msg  # suggests real names


def test_error_dtype_and_runtime_arguments(sd3, tiny_cache):
    _raises("fp8", dtype="fp8")
    cond = sd3.encode_prompts(PROMPTS)
    x, t = _inputs(sd3)
    with pytest.raises(BackboneError, match="adapter"):
        sd3.velocity(x, t, cond, "ema")
    with pytest.raises(BackboneError, match="sampler"):
        sd3.sample(cond, num_steps=2, generator=torch.Generator(), sampler="rk4")
    with pytest.raises(BackboneError, match="list"):
        sd3.encode_prompts("a red cube")


# --------------------------------------------------------------------------- plugin entry point
def test_plugin_module_is_light_and_registered():
    import subprocess
    import sys

    code = (
        "import sys, marble_diffusers.plugin as p\n"
        "specs = p.marble_register_backbones()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
        "print(sorted(s.name for s in specs), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['flux', 'flux-tiny', 'sd3', 'sd3-tiny'] []"

    from importlib.metadata import entry_points

    from marble_diffusers import SD3Args, SD3TinyArgs
    from marble_diffusers.plugin import marble_register_backbones

    eps = [e for e in entry_points(group="marble.plugins") if e.name == "diffusers"]
    assert eps and eps[0].value == "marble_diffusers.plugin"
    spec = {s.name: s for s in marble_register_backbones()}["sd3"]
    tiny = SD3Args(**spec.tiny_args)
    assert tiny.model == "tiny" and tiny.resolution == SD3TinyArgs().resolution
    assert SD3Args().lora_rank == 32 and SD3Args().lora_alpha == 64 and SD3Args().resolution == 512
