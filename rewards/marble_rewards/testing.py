"""Random checkpoints in the real on-disk formats, so the real loading code runs offline (CI).

Every ``make_*`` function writes files laid out exactly as the published weights are (same
config classes, same state-dict keys, same file names) and returns the reward args that
point at them::

    args = make_pickscore(tmp_path)          # {"model": ".../PickScore_v1", "processor": ...}
    reward = marble.host.build_reward("pickscore", {**args, "device": "cpu"})

``size="tiny"`` (default) builds models of a few MB in about a second; ``size="full"`` builds
the published architectures with random weights (GBs; for GPU benchmarks). Scores of random
models mean nothing - only shapes, code paths and timings do.

What is built:

* CLIP tokenizer: the exact OpenAI CLIP BPE vocabulary (49,408 ids) rebuilt from the
  ``bpe_simple_vocab_16e6.txt.gz`` file bundled in the open_clip package (found without
  importing open_clip), saved with ``save_pretrained`` - the same tokens as the real ones.
* ``make_pickscore``: a ``CLIPModel`` folder named ``PickScore_v1`` and a ``CLIPProcessor``
  folder named ``CLIP-ViT-H-14-laion2B-s32B-b79K`` (OpenAI CLIP image preprocessing, 224 px).
* ``make_clip_l14``: one folder ``clip-vit-large-patch14`` with model and processor, with a
  768-d projection like ViT-L/14 (used by CLIPScore and the aesthetic predictor).
* ``make_aesthetic``: the tiny ViT-L/14 stand-in plus ``sac+logos+ava1-l14-linearMSE.pth``, a
  plain state dict of the real-size 768-1024-128-64-16-1 MLP (``layers.{0,2,4,6,7}``).
* ``make_hpsv2``: ``HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``) of an open_clip model
  built from a tiny config with ViT-H-14's structure (so the same key names), written as
  ``marble-tiny-ViT-H-14.json``. The reward's ``model`` arg takes that JSON path: the reward
  registers it with ``open_clip.add_model_config(path)`` and creates the model by its stem.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

# Real configurations (transformers CLIPConfig fields / open_clip model config).
VIT_H14_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    hidden_act="gelu")
VIT_H14_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="gelu")
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    hidden_act="quick_gelu")
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=224, patch_size=14)

OPEN_CLIP_TINY_VIT_H14 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_HPS_CONFIG_NAME = "marble-tiny-ViT-H-14"


def _check_size(size: str) -> None:
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")


# ---------------------------------------------------------------------- tokenizer
def bpe_path() -> str:
    """open_clip's bundled BPE merges file (located without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip is not installed: it ships the CLIP BPE file the tiny tokenizer is built from")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(path):
        raise RuntimeError(f"CLIP BPE file not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_tokenizer():
    """A ``transformers.CLIPTokenizer`` with OpenAI CLIP's vocabulary and merges (49,408 ids)."""
    from transformers import CLIPTokenizer

    with gzip.open(bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges, model_max_length=77)


def save_clip_processor(directory: str | os.PathLike, tokenizer: Any = None) -> str:
    """A ``CLIPProcessor`` folder: OpenAI CLIP image preprocessing (shortest side 224, bicubic,
    centre crop 224, CLIP mean/std) and the CLIP tokenizer."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    directory = str(directory)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer or clip_tokenizer())
    proc.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------- HF CLIP models
def clip_config(text: dict, vision: dict, projection_dim: int):
    from transformers import CLIPConfig

    text = dict(text, vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=dict(vision), projection_dim=projection_dim,
                      logit_scale_init_value=4.6052)  # exp = 100, as the trained checkpoints


def save_clip_model(directory: str | os.PathLike, config: Any, *, seed: int = 0, init_device: str = "cpu") -> str:
    """A random ``CLIPModel`` saved with ``save_pretrained`` (config.json + model.safetensors)."""
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed)
    with torch.device(init_device):
        model = CLIPModel(config)
    model.save_pretrained(str(directory))
    return str(directory)


def make_pickscore(root: str | os.PathLike, size: str = "tiny", *, seed: int = 0, init_device: str = "cpu",
                   tokenizer: Any = None) -> dict:
    """``PickScore_v1`` model folder + ``CLIP-ViT-H-14-laion2B-s32B-b79K`` processor folder."""
    _check_size(size)
    root = Path(root)
    text, vision, proj = (VIT_H14_TEXT, VIT_H14_VISION, 1024) if size == "full" else (
        dict(TINY_TEXT, hidden_act="gelu"), dict(TINY_VISION, hidden_act="gelu"), 32)
    model = save_clip_model(root / "PickScore_v1", clip_config(text, vision, proj), seed=seed, init_device=init_device)
    proc = save_clip_processor(root / "CLIP-ViT-H-14-laion2B-s32B-b79K", tokenizer)
    return {"model": model, "processor": proc}


def make_clip_l14(root: str | os.PathLike, size: str = "tiny", *, seed: int = 1, init_device: str = "cpu",
                  tokenizer: Any = None) -> dict:
    """One ``clip-vit-large-patch14`` folder (model + processor), 768-d projection. Args for
    ``clipscore``."""
    _check_size(size)
    folder = Path(root) / "clip-vit-large-patch14"
    text, vision = (VIT_L14_TEXT, VIT_L14_VISION) if size == "full" else (
        dict(TINY_TEXT, hidden_act="quick_gelu"), dict(TINY_VISION, hidden_act="quick_gelu"))
    save_clip_model(folder, clip_config(text, vision, 768), seed=seed, init_device=init_device)
    save_clip_processor(folder, tokenizer)
    return {"model": str(folder), "processor": str(folder)}


def make_aesthetic_mlp(path: str | os.PathLike, *, seed: int = 2) -> str:
    """A random predictor state dict saved like ``sac+logos+ava1-l14-linearMSE.pth``."""
    import torch

    from marble_rewards.aesthetic import build_mlp

    torch.manual_seed(seed)
    mlp = build_mlp()
    with torch.no_grad():  # centre the random head around the real predictor's typical 5.5
        mlp.layers[7].bias.add_(5.5)
    torch.save(mlp.state_dict(), str(path))
    return str(path)


def make_aesthetic(root: str | os.PathLike, size: str = "tiny", *, init_device: str = "cpu",
                   tokenizer: Any = None) -> dict:
    """The ViT-L/14 stand-in (shared with ``make_clip_l14``; reused if present) plus the MLP file."""
    root = Path(root)
    folder = root / "clip-vit-large-patch14"
    if not (folder / "config.json").is_file():
        make_clip_l14(root, size, init_device=init_device, tokenizer=tokenizer)
    mlp = make_aesthetic_mlp(root / "sac+logos+ava1-l14-linearMSE.pth")
    return {"clip_model": str(folder), "processor": str(folder), "mlp_path": mlp}


# ---------------------------------------------------------------------- open_clip (HPSv2)
def make_hpsv2(root: str | os.PathLike, size: str = "tiny", *, seed: int = 3, init_device: str = "cpu") -> dict:
    """``HPS_v2.1_compressed.pt`` for an open_clip model; tiny: the model config JSON beside it.
    (``init_device`` is accepted for symmetry; open_clip models are always built on the CPU.)"""
    import open_clip
    import torch

    _check_size(size)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if size == "full":
        model_arg = name = "ViT-H-14"
    else:
        cfg_path = root / f"{TINY_HPS_CONFIG_NAME}.json"
        cfg_path.write_text(json.dumps(OPEN_CLIP_TINY_VIT_H14, indent=2))
        from marble_rewards.hpsv2 import resolve_model_name

        name = resolve_model_name("hpsv2", str(cfg_path))  # registers the config
        model_arg = str(cfg_path)
    from marble_rewards.hpsv2 import _quiet_no_pretrained

    torch.manual_seed(seed)
    with _quiet_no_pretrained():  # built on the CPU (full ViT-H-14: ~20 s), as the reward builds it
        model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu")
    ckpt = root / "HPS_v2.1_compressed.pt"
    state = {k: v.detach().to("cpu", torch.float16 if size == "full" else torch.float32).contiguous()
             for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, str(ckpt))
    return {"model": model_arg, "checkpoint": str(ckpt), "hub_repo": ""}


# ---------------------------------------------------------------------- everything
def make_all(root: str | os.PathLike, size: str = "tiny", *, init_device: str = "cpu",
             names: list[str] | None = None) -> dict[str, dict]:
    """Args for every reward of this package (or only ``names``), keyed by reward name. The
    tokenizer is built once; CLIPScore and aesthetic share one ViT-L/14 folder."""
    root = Path(root)
    names = list(names) if names is not None else list(REWARDS)
    unknown = sorted(set(names) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; choose from {list(REWARDS)}")
    tok = clip_tokenizer() if {"pickscore", "clipscore", "aesthetic"} & set(names) else None
    out: dict[str, dict] = {}
    for name in names:
        if name == "pickscore":
            out[name] = make_pickscore(root / "pickscore", size, init_device=init_device, tokenizer=tok)
        elif name == "hpsv2":
            out[name] = make_hpsv2(root / "hpsv2", size, init_device=init_device)
        elif name == "clipscore":
            if not (root / "clip-vit-large-patch14" / "config.json").is_file():
                make_clip_l14(root, size, init_device=init_device, tokenizer=tok)
            folder = str(root / "clip-vit-large-patch14")
            out[name] = {"model": folder, "processor": folder}
        elif name == "aesthetic":
            out[name] = make_aesthetic(root, size, init_device=init_device, tokenizer=tok)
        else:  # ocr (weights ship with rapidocr) and the JPEG rewards need no files
            out[name] = {}
    return out


REWARDS = ("pickscore", "hpsv2", "clipscore", "aesthetic", "ocr", "jpeg_compressibility", "jpeg_incompressibility")
