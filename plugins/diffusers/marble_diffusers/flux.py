"""The ``flux`` backbone: FLUX.1-dev / FLUX.1-schnell through diffusers.

Latents are FLUX's packed tokens: the N x 16 x h x w VAE latents cut into 2x2 patches,
N x (h/2 * w/2) x 64. The transformer takes ``timestep = t`` in [0, 1] (it scales by 1000
itself) and, for guidance-distilled models (dev), the guidance value through its guidance
embedding. The time grid uses the checkpoint's own (resolution-dependent) shift.
Conditioning: ``prompt_embeds`` (N x T5 tokens x 4096) and ``pooled_prompt_embeds``
(N x 768, CLIP pooled).
"""

from __future__ import annotations

import torch

from marble_diffusers._base import DiffusersFlowBackbone


class FluxBackbone(DiffusersFlowBackbone):
    """``FluxBackbone(FluxArgs(...))``: a FluxPipeline checkpoint with two LoRA adapters."""

    name = "flux"
    example_hub_id = "black-forest-labs/FLUX.1-dev"
    pipeline_class = "FluxPipeline"
    other_backbones = {"StableDiffusion3Pipeline": "sd3"}
    required_models = ("transformer", "vae", "text_encoder", "text_encoder_2")
    required_other = ("scheduler", "tokenizer", "tokenizer_2")

    def __init__(self, args):
        self.name = "flux-tiny" if args.model == "tiny" else "flux"
        if not 1 <= int(args.max_sequence_length) <= 512:
            raise self._err(f"max_sequence_length must be in [1, 512], got {args.max_sequence_length}",
                            "use 512 for FLUX.1-dev, 256 for schnell")
        super().__init__(args)
        self._ids: dict = {}

    def _tiny_path(self, seed: int):
        from marble_diffusers.tiny import tiny_flux_path

        return tiny_flux_path(seed=seed)

    def _transformer_class(self):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def _load_pipeline(self, path: str):
        from diffusers import FluxPipeline

        return self._from_pretrained(FluxPipeline, path)

    def _encode_uncached(self, prompts: list[str]) -> dict:
        prompt_embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            max_sequence_length=int(self.args.max_sequence_length),
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    # packed latents ------------------------------------------------------------------
    def _latent_side(self) -> int:
        return self.args.resolution // self.vae_scale_factor

    def _noise_shape(self, n: int) -> tuple:
        h = self._latent_side()
        return (n, self.transformer.config.in_channels // 4, h, h)

    def _pack(self, z):
        n, c, h, w = z.shape
        z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return z.reshape(n, (h // 2) * (w // 2), c * 4)

    def _unpack(self, x):
        n, _, d = x.shape
        h = w = self._latent_side()
        c = d // 4
        x = x.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, h, w)

    def _position_ids(self, text_len: int):
        key = (text_len, self.dtype)
        if key not in self._ids:
            half = self._latent_side() // 2
            img = torch.zeros(half, half, 3)
            img[..., 1] += torch.arange(half)[:, None]  # row
            img[..., 2] += torch.arange(half)[None, :]  # column
            img = img.reshape(half * half, 3).to(self.device, self.dtype)
            txt = torch.zeros(text_len, 3, device=self.device, dtype=self.dtype)
            self._ids[key] = (txt, img)
        return self._ids[key]

    def _forward(self, model, x, t, cond):
        n = x.shape[0]
        txt_ids, img_ids = self._position_ids(cond["prompt_embeds"].shape[1])
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), float(self.args.guidance), device=self.device, dtype=torch.float32)
        return model(
            hidden_states=x,
            timestep=t,  # FLUX's transformer multiplies by 1000 itself
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
