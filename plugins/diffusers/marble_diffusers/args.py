"""Config dataclasses of the diffusers backbones (the ``args`` of a backbone in a run config).

Kept free of heavy imports: ``marble plugins`` imports this module to list the backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

#: LoRA targets of DiffusionNFT / MARBLE (ALGORITHM.md 1): the joint-attention projections.
DEFAULT_LORA_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]

#: ``model`` value that builds (once, cached on disk) a tiny random pipeline instead of loading one.
TINY = "tiny"


@dataclass
class SD3Args:
    """Arguments of the ``sd3`` backbone (Stable Diffusion 3 / 3.5 through diffusers).

    model: hub id or local diffusers folder of a StableDiffusion3Pipeline checkpoint
        (SD3-medium, SD3.5-medium, SD3.5-large), or ``"tiny"`` for the offline random test model.
    revision: hub revision (branch, tag or commit); ignored for local folders.
    device: "auto" (this rank's GPU, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bf16 on GPU, fp32 on CPU), "fp32", "fp64", "bf16", "fp16". LoRA weights are
        kept in fp32 when the model runs in bf16/fp16.
    resolution: image side in pixels; must be divisible by vae_scale_factor * patch_size (16).
    lora_rank, lora_alpha, lora_targets: the LoRA (module-name suffixes as peft matches them).
    full_finetune: train every transformer weight instead of a LoRA (keeps three copies of the
        transformer: trained, old, reference).
    drop_t5: do not load the T5 text encoder (its embedding part is zeros), saves ~9 GB.
    max_sequence_length: T5 tokens per prompt.
    gradient_checkpointing: recompute transformer activations in the backward pass.
    offload_encoders: keep text encoders and VAE on the CPU except while they run; after
        ``cache_prompts`` the text encoders are freed.
    seed: seed of the LoRA initialisation.
    prompt_cache_size: prompt embeddings kept (CPU, least recently used evicted).
    decode_batch_size: images decoded by the VAE at once.
    tiny_seed: seed of the random weights when ``model == "tiny"``.
    compile: the fast path (marble_diffusers/fast.py): "auto" (on when the model runs on CUDA),
        "true" or "false" (eager fallback). On: each repeated transformer block is compiled with
        torch.compile (regional compilation), adapter switches rebind tensors instead of peft's
        Python state (no recompiles), and the LoRA runs in the model dtype from fp32 masters.
    """

    model: str = "stabilityai/stable-diffusion-3.5-medium"
    revision: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    resolution: int = 512
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_targets: List[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    full_finetune: bool = False
    drop_t5: bool = False
    max_sequence_length: int = 256
    gradient_checkpointing: bool = False
    offload_encoders: bool = False
    seed: int = 0
    prompt_cache_size: int = 1024
    decode_batch_size: int = 8
    tiny_seed: int = 0
    compile: str = "auto"  # auto | true | false (see SD3Args)


@dataclass
class SD3TinyArgs(SD3Args):
    """``sd3-tiny``: the ``sd3`` backbone on a tiny random SD3.5-style pipeline built offline."""

    model: str = TINY
    resolution: int = 64
    lora_rank: int = 4
    lora_alpha: float = 8.0
    max_sequence_length: int = 32


@dataclass
class FluxArgs:
    """Arguments of the ``flux`` backbone (FLUX.1-dev / FLUX.1-schnell through diffusers).

    model: hub id or local diffusers folder of a FluxPipeline checkpoint, or ``"tiny"``.
    guidance: the distilled-guidance value fed to the guidance embedding (FLUX.1-dev: 3.5);
        ignored by models without one (schnell). ``sample(guidance_scale > 1)`` adds true CFG
        with the empty prompt on top.
    max_sequence_length: T5 tokens per prompt (dev: up to 512, schnell: up to 256).
    The other fields mean what they mean for ``sd3`` (resolution divisible by 16).
    """

    model: str = "black-forest-labs/FLUX.1-dev"
    revision: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    resolution: int = 512
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_targets: List[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    full_finetune: bool = False
    guidance: float = 3.5
    max_sequence_length: int = 512
    gradient_checkpointing: bool = False
    offload_encoders: bool = False
    seed: int = 0
    prompt_cache_size: int = 1024
    decode_batch_size: int = 8
    tiny_seed: int = 0
    compile: str = "auto"  # auto | true | false (see SD3Args)


@dataclass
class FluxTinyArgs(FluxArgs):
    """``flux-tiny``: the ``flux`` backbone on a tiny random FLUX.1-dev-style pipeline built offline."""

    model: str = TINY
    resolution: int = 64
    lora_rank: int = 4
    lora_alpha: float = 8.0
    max_sequence_length: int = 32


def tiny_args_dict(cls) -> dict:
    """The non-default fields of a tiny args class, as a plain mapping (for BackboneSpec.tiny_args)."""
    return {
        "model": TINY,
        "resolution": cls.resolution,
        "lora_rank": cls.lora_rank,
        "lora_alpha": cls.lora_alpha,
        "max_sequence_length": cls.max_sequence_length,
    }
