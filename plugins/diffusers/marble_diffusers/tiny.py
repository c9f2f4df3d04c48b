"""Tiny random SD3 and FLUX pipelines, built offline from small configs.

The backbones load them through exactly the code path of a real checkpoint: the pipeline is
written with ``save_pretrained`` into a cache folder, then read back with ``from_pretrained``.

* ``build_tiny_sd3(path, seed=0, **sizes)`` / ``build_tiny_flux(path, seed=0, **sizes)`` write
  a folder; the weights are a pure function of (seed, sizes, library versions).
* ``tiny_sd3_path(seed=0, **sizes)`` / ``tiny_flux_path(...)`` return the cached folder under
  ``$MARBLE_CACHE`` (default ``~/.cache/marble``), building it atomically the first time.

Tokenizers need no download: CLIP gets a byte-level BPE vocabulary (256 byte symbols, their
end-of-word forms, and the two specials: 514 ids, no merges), T5 a Unigram vocabulary over the
printable ASCII characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_BUILDER_VERSION = 1
_MARKER = "marble_tiny.json"

SD3_SIZES: dict[str, Any] = {
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "dual_attention_layers": [0],  # SD3.5-medium style (MMDiT-X): block 0 has a second attention
    "pos_embed_max_size": 16,  # latent side / patch <= 16: up to 256 px
    "clip_hidden": 16,
    "clip_layers": 2,
    "clip_max_tokens": 32,
    "t5_d_model": 32,  # joint_attention_dim; must be >= 2 * clip_hidden
    "t5_layers": 2,
    "vae_channels": [8, 8, 16, 16],  # 4 levels: vae_scale_factor 8 as in the real VAE
}

FLUX_SIZES: dict[str, Any] = {
    "num_layers": 1,
    "num_single_layers": 1,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "axes_dims_rope": [2, 2, 4],  # sums to attention_head_dim
    "clip_hidden": 16,
    "clip_layers": 2,
    "clip_max_tokens": 32,
    "t5_d_model": 32,
    "t5_layers": 2,
    "vae_channels": [8, 8, 16, 16],
}


# ----------------------------------------------------------------------------- tokenizers
def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _clip_tokenizer(max_tokens: int):
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_tokens)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


# ----------------------------------------------------------------------------- modules
def _clip_config(s: dict, with_projection: bool):
    from transformers import CLIPTextConfig

    kw = dict(
        vocab_size=514,
        hidden_size=s["clip_hidden"],
        intermediate_size=2 * s["clip_hidden"],
        num_hidden_layers=s["clip_layers"],
        num_attention_heads=2,
        max_position_embeddings=s["clip_max_tokens"],
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_act="gelu",
    )
    if with_projection:
        kw["projection_dim"] = s["clip_hidden"]
    return CLIPTextConfig(**kw)


def _t5(s: dict):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=98,
        d_model=s["t5_d_model"],
        d_kv=8,
        d_ff=2 * s["t5_d_model"],
        num_layers=s["t5_layers"],
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def _vae(s: dict, scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    ch = tuple(s["vae_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(ch),
        up_block_types=("UpDecoderBlock2D",) * len(ch),
        block_out_channels=ch,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _seeded(seed: int, k: int, build):
    """Build one module under its own seed (seed, k), so modules do not share an RNG stream."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + k)
        module = build()
    return module.eval()


def _sizes(defaults: dict, overrides: dict) -> dict:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"unknown tiny size(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    s = dict(defaults)
    s.update(overrides)
    return s


def build_tiny_sd3(path: str | os.PathLike, seed: int = 0, **sizes: Any) -> Path:
    """Write a tiny random StableDiffusion3Pipeline (SD3.5-medium architecture) to ``path``.

    ``sizes`` override entries of ``SD3_SIZES``. Deterministic for a given seed and sizes.
    Returns the folder.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    s = _sizes(SD3_SIZES, sizes)
    if s["t5_d_model"] < 2 * s["clip_hidden"]:
        raise ValueError("t5_d_model must be >= 2 * clip_hidden (SD3 pads the CLIP features to the T5 width)")
    inner = s["num_attention_heads"] * s["attention_head_dim"]
    transformer = _seeded(seed, 0, lambda: SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=s["num_layers"],
        attention_head_dim=s["attention_head_dim"],
        num_attention_heads=s["num_attention_heads"],
        joint_attention_dim=s["t5_d_model"],
        caption_projection_dim=inner,
        pooled_projection_dim=2 * s["clip_hidden"],
        pos_embed_max_size=s["pos_embed_max_size"],
        dual_attention_layers=tuple(s["dual_attention_layers"]),
        qk_norm="rms_norm",
    ))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_seeded(seed, 1, lambda: _vae(s, scaling_factor=1.5305, shift_factor=0.0609)),
        text_encoder=_seeded(seed, 2, lambda: CLIPTextModelWithProjection(_clip_config(s, True))),
        tokenizer=_clip_tokenizer(s["clip_max_tokens"]),
        text_encoder_2=_seeded(seed, 3, lambda: CLIPTextModelWithProjection(_clip_config(s, True))),
        tokenizer_2=_clip_tokenizer(s["clip_max_tokens"]),
        text_encoder_3=_seeded(seed, 4, lambda: _t5(s)),
        tokenizer_3=_t5_tokenizer(),
    )
    return _save(pipe, path, "sd3", seed, s)


def build_tiny_flux(path: str | os.PathLike, seed: int = 0, **sizes: Any) -> Path:
    """Write a tiny random FluxPipeline (FLUX.1-dev architecture: guidance embedding, dynamic
    time shift) to ``path``. ``sizes`` override entries of ``FLUX_SIZES``. Returns the folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    s = _sizes(FLUX_SIZES, sizes)
    if sum(s["axes_dims_rope"]) != s["attention_head_dim"]:
        raise ValueError("axes_dims_rope must sum to attention_head_dim")
    transformer = _seeded(seed, 0, lambda: FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=s["num_layers"],
        num_single_layers=s["num_single_layers"],
        attention_head_dim=s["attention_head_dim"],
        num_attention_heads=s["num_attention_heads"],
        joint_attention_dim=s["t5_d_model"],
        pooled_projection_dim=s["clip_hidden"],
        guidance_embeds=True,
        axes_dims_rope=tuple(s["axes_dims_rope"]),
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_seeded(seed, 1, lambda: _vae(s, scaling_factor=0.3611, shift_factor=0.1159)),
        text_encoder=_seeded(seed, 2, lambda: CLIPTextModel(_clip_config(s, False))),
        tokenizer=_clip_tokenizer(s["clip_max_tokens"]),
        text_encoder_2=_seeded(seed, 4, lambda: _t5(s)),
        tokenizer_2=_t5_tokenizer(),
    )
    return _save(pipe, path, "flux", seed, s)


def _save(pipe, path, kind: str, seed: int, sizes: dict) -> Path:
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    # written last: a folder with this marker is complete
    (path / _MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "sizes": sizes, "versions": _versions()}, indent=1))
    return path


# ----------------------------------------------------------------------------- cache
def _versions() -> dict:
    from importlib.metadata import version

    return {d: version(d) for d in ("torch", "diffusers", "transformers")}


def cache_root() -> Path:
    """``$MARBLE_CACHE`` if set, else ``~/.cache/marble``."""
    root = os.environ.get("MARBLE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "marble"


def _cached(kind: str, builder, defaults: dict, seed: int, sizes: dict) -> Path:
    s = _sizes(defaults, sizes)
    key = json.dumps({"b": _BUILDER_VERSION, "seed": seed, "sizes": s, "v": _versions()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    final = cache_root() / f"{kind}-tiny-{digest}"
    if (final / _MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        builder(tmp, seed=seed, **sizes)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / _MARKER).is_file():
                # an incomplete leftover (no marker): replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_sd3_path(seed: int = 0, **sizes: Any) -> Path:
    """The cached tiny SD3 folder for (seed, sizes), built on first use."""
    return _cached("sd3", build_tiny_sd3, SD3_SIZES, seed, sizes)


def tiny_flux_path(seed: int = 0, **sizes: Any) -> Path:
    """The cached tiny FLUX folder for (seed, sizes), built on first use."""
    return _cached("flux", build_tiny_flux, FLUX_SIZES, seed, sizes)
