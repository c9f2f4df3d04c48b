"""The ``sd3`` backbone on a randomly initialised transformer of a given size (benchmarks).

Cost does not depend on weight values, so a random SD3.5-Medium-sized transformer gives real
timings without the 10 GB checkpoint or network access. ``RandomSD3Backbone`` is the project's
``SD3Backbone`` (same LoRA adapters, samplers, velocity, fast path) with three things replaced:

* the transformer is built from a config (``SD35_MEDIUM_TRANSFORMER`` or the tiny one) with
  random weights, directly on the target device;
* no text encoders: a prompt's embeddings are deterministic random tensors of the real shapes
  (SD3.5: 333 tokens x 4096 = 77 CLIP + 256 T5, pooled 2048), so prompt encoding costs nothing
  (the trainer caches embeddings per prompt in real runs too);
* the VAE is optional (``with_vae``): a random VAE of the real config, or by default a free
  latent preview (``tanh`` of the first three latent channels, at latent resolution).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import torch

from marble_diffusers.args import SD3Args
from marble_diffusers.sd3 import SD3Backbone

#: SD3.5-Medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json):
#: 24 MMDiT-X layers, hidden 1536 (24 heads x 64), dual attention in layers 0..12; 2.24 B params.
SD35_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}

#: SD3.5's VAE (16 latent channels, scale factor 8).
SD35_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

#: The sd3-tiny transformer (marble_diffusers.tiny.SD3_SIZES), with one more layer of each
#: kind so that blocks of one kind repeat: 2 dual-attention layers, 1 plain, the last one.
SD3_TINY_TRANSFORMER = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0, 1),
    "qk_norm": "rms_norm",
}

SD3_TINY_VAE = {**SD35_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4,
                "sample_size": 64}

SIZES = {
    # size: (transformer config, vae config, text tokens)
    "medium": (SD35_MEDIUM_TRANSFORMER, SD35_VAE, 333),
    "tiny": (SD3_TINY_TRANSFORMER, SD3_TINY_VAE, 64),
}

#: SD3.5's scheduler: static time shift 3.0.
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


@dataclass
class RandomSD3Args(SD3Args):
    """Arguments of ``RandomSD3Backbone`` (the ``sd3`` arguments, plus):

    size: "medium" (SD3.5-Medium's transformer) or "tiny".
    text_tokens: prompt-embedding length (None: 333 for medium = 77 CLIP + 256 T5, 64 for tiny).
    with_vae: decode with a random VAE of the real config (else a free latent preview).
    ``model`` is ignored.
    """

    size: str = "medium"
    text_tokens: Optional[int] = None
    with_vae: bool = False


class _LatentPreview(torch.nn.Module):
    """Stands in for the VAE: ``decode(z) = tanh(z[:, :3])`` at latent resolution (no weights)."""

    def __init__(self, vae_config: dict):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(latent_channels=vae_config["latent_channels"],
                                      scaling_factor=vae_config["scaling_factor"],
                                      shift_factor=vae_config["shift_factor"])
        self._anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # device / dtype holder

    @property
    def dtype(self):
        return self._anchor.dtype

    def decode(self, z, return_dict: bool = False):
        return (torch.tanh(z[:, :3].float()).nan_to_num(0.0).to(z.dtype),)


class _Pipe:
    """The few pipeline attributes the backbone reads."""

    def __init__(self, transformer, vae):
        from types import SimpleNamespace

        self.transformer, self.vae = transformer, vae
        self.scheduler = SimpleNamespace(config=dict(SCHEDULER_CONFIG))

    @staticmethod
    def save_lora_weights(*args, **kwargs):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline.save_lora_weights(*args, **kwargs)


class RandomSD3Backbone(SD3Backbone):
    """``SD3Backbone`` on a random transformer of ``args.size`` (see the module docstring)."""

    def __init__(self, args: RandomSD3Args):
        if args.size not in SIZES:
            from marble.errors import BackboneError

            raise BackboneError(f"backbone 'sd3-random': unknown size {args.size!r}. Fix: use one of {sorted(SIZES)}")
        self.name = f"sd3-random-{args.size}"
        tcfg, vcfg, tokens = SIZES[args.size]
        self._tcfg, self._vcfg = dict(tcfg), dict(vcfg)
        self.text_tokens = int(args.text_tokens or tokens)
        super(SD3Backbone, self).__init__(args)  # DiffusersFlowBackbone.__init__, skipping the name logic

    # --------------------------------------------------------------- construction hooks
    def _resolve_model(self) -> str:
        return f"random:{self.args.size}"

    def _load_component_configs(self, path: str) -> tuple[dict, dict]:
        return dict(self._tcfg), dict(self._vcfg)

    def _seeded_build(self, k: int, build):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.device(self.device):
            torch.manual_seed(int(self.args.seed) * 1000 + k)
            module = build()
        return module.to(self.dtype).eval()

    def _load_pipeline(self, path: str):
        from diffusers import AutoencoderKL, SD3Transformer2DModel

        transformer = self._seeded_build(1, lambda: SD3Transformer2DModel(**self._tcfg))
        if self.args.with_vae:
            vae = self._seeded_build(2, lambda: AutoencoderKL(**self._vcfg))
        else:
            vae = _LatentPreview(self._vcfg).to(self.device, self.dtype)
        return _Pipe(transformer, vae)

    def _encode_uncached(self, prompts: list[str]) -> dict:
        """Deterministic random embeddings per prompt, of the real shapes (unit variance)."""
        embeds, pooled = [], []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little") & ((1 << 62) - 1)
            g = torch.Generator().manual_seed(seed)
            embeds.append(torch.randn(self.text_tokens, self._tcfg["joint_attention_dim"], generator=g))
            pooled.append(torch.randn(self._tcfg["pooled_projection_dim"], generator=g))
        return {"prompt_embeds": torch.stack(embeds).to(self.dtype), "pooled_prompt_embeds": torch.stack(pooled).to(self.dtype)}

    def versions(self) -> dict:
        out = super().versions()
        out["model"] = f"random SD3 transformer ({self.args.size})"
        return out
