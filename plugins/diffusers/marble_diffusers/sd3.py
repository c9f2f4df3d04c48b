"""The ``sd3`` backbone: Stable Diffusion 3 / 3.5 (medium, large) through diffusers.

The SD3 transformer takes ``timestep = 1000 t`` and predicts the flow velocity eps - x0 on the
scaled VAE latents (N x 16 x R/8 x R/8); decoding is ``vae.decode(x / scaling + shift)``.
Conditioning: ``prompt_embeds`` (N x (77 + T5 tokens) x 4096: two CLIP hidden states padded,
then T5) and ``pooled_prompt_embeds`` (N x 2048: both CLIP pooled outputs).
"""

from __future__ import annotations

from marble_diffusers._base import DiffusersFlowBackbone


class SD3Backbone(DiffusersFlowBackbone):
    """``SD3Backbone(SD3Args(...))``: a StableDiffusion3Pipeline checkpoint with two LoRA
    adapters (trained / old) on its transformer; the reference is the transformer without them."""

    name = "sd3"
    example_hub_id = "stabilityai/stable-diffusion-3.5-medium"
    pipeline_class = "StableDiffusion3Pipeline"
    other_backbones = {"FluxPipeline": "flux", "StableDiffusionXLPipeline": None}
    required_models = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    required_other = ("scheduler", "tokenizer", "tokenizer_2", "tokenizer_3")

    def __init__(self, args):
        self.name = "sd3-tiny" if args.model == "tiny" else "sd3"
        super().__init__(args)

    def _components_needed(self) -> tuple:
        comps = self.required_models + self.required_other
        if self.args.drop_t5:
            comps = tuple(c for c in comps if c not in ("text_encoder_3", "tokenizer_3"))
        return comps

    def _tiny_path(self, seed: int):
        from marble_diffusers.tiny import tiny_sd3_path

        return tiny_sd3_path(seed=seed)

    def _transformer_class(self):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def _latent_patch(self) -> int:
        return int(self.transformer_config.get("patch_size", 2))

    def _check_resolution_limit(self, res: int) -> None:
        max_side = self.transformer_config.get("pos_embed_max_size")
        side = res // self.vae_scale_factor // self._latent_patch()
        if max_side and side > max_side:
            top = max_side * self._latent_patch() * self.vae_scale_factor
            raise self._err(
                f"resolution {res} needs {side}x{side} position embeddings but this transformer has {max_side}x{max_side}",
                f"use a resolution of at most {top}",
            )

    def _load_pipeline(self, path: str):
        from diffusers import StableDiffusion3Pipeline

        extra = {"text_encoder_3": None, "tokenizer_3": None} if self.args.drop_t5 else {}
        return self._from_pretrained(StableDiffusion3Pipeline, path, **extra)

    def _encode_uncached(self, prompts: list[str]) -> dict:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=int(self.args.max_sequence_length),
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def _forward(self, model, x, t, cond):
        return model(
            hidden_states=x,
            timestep=t * 1000,  # diffusers' SD3 transformer is trained on t in [0, 1000]
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
