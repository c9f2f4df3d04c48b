"""Hugging Face CLIP models shared by PickScore, CLIPScore and the aesthetic predictor.

A process-wide cache keyed by (folder or hub id, device, dtype) makes two rewards that use the
same CLIP (CLIPScore and aesthetic both use ``openai/clip-vit-large-patch14``) load it once.
Processors are cached by folder. Models are frozen (eval, no grad).

Preprocessing goes through the checkpoint's own image processor (transformers' torchvision
backend, batched on the reward's device) with ``do_rescale=False``: our images are already
floats in [0, 1], and the processor's default 1/255 rescale would silently destroy the score.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from marble_rewards._base import from_pretrained

_MODELS: dict[tuple[str, str, str], Any] = {}
_PROCESSORS: dict[str, Any] = {}
_LOCK = threading.RLock()


def _key(value: str) -> str:
    path = os.path.expanduser(value)
    return os.path.realpath(path) if os.path.isdir(path) else value


def load_clip_model(reward: str, arg: str, value: str, device: Any, dtype: Any, *, hub_id: str) -> Any:
    """A frozen ``transformers.CLIPModel`` on ``device`` in ``dtype``, loaded once per process."""
    key = (_key(value), str(device), str(dtype))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from transformers import CLIPModel

            model = from_pretrained(reward, arg, CLIPModel, value, what="CLIP model", hub_id=hub_id)
            # exp(logit_scale) read before any cast: in bf16, 4.6052 rounds to 4.594 (exp 98.9, not 100)
            model.marble_logit_scale = float(model.logit_scale.detach().double().exp())
            model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
            _MODELS[key] = model
        return model


def load_clip_processor(reward: str, arg: str, value: str, *, hub_id: str) -> Any:
    """A ``transformers.CLIPProcessor`` (image processor + tokenizer), loaded once per process."""
    key = _key(value)
    with _LOCK:
        proc = _PROCESSORS.get(key)
        if proc is None:
            from transformers import CLIPProcessor

            proc = from_pretrained(reward, arg, CLIPProcessor, value, what="CLIP processor", hub_id=hub_id)
            _PROCESSORS[key] = proc
        return proc


def clear_cache() -> None:
    """Forget every cached CLIP model and processor (frees their memory once unreferenced)."""
    with _LOCK:
        _MODELS.clear()
        _PROCESSORS.clear()


def cached_models() -> list[tuple[str, str, str]]:
    """Keys (path, device, dtype) of the CLIP models loaded in this process."""
    with _LOCK:
        return list(_MODELS)


def _features(out: Any) -> Any:
    """transformers 5.x returns a ModelOutput whose ``pooler_output`` is the projected feature;
    older versions return the tensor itself."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def pixel_values(processor: Any, images: Any, dtype: Any) -> Any:
    """Float images N x 3 x H x W in [0, 1] (on the model's device) -> normalized pixel values,
    resized and cropped exactly as the checkpoint's image processor does, in one batch."""
    ip = getattr(processor, "image_processor", processor)
    out = ip(
        images=list(images),
        do_rescale=False,
        input_data_format="channels_first",
        device=images.device,
        return_tensors="pt",
    )
    return out["pixel_values"].to(device=images.device, dtype=dtype)


def image_embeds(model: Any, processor: Any, images: Any) -> Any:
    """L2-normalized image features (float32), one row per image."""
    import torch

    pv = pixel_values(processor, images, model.dtype)
    feats = _features(model.get_image_features(pixel_values=pv)).float()
    return feats / torch.linalg.vector_norm(feats, dim=-1, keepdim=True)


def text_embeds(model: Any, processor: Any, prompts: list[str], device: Any) -> Any:
    """L2-normalized text features (float32), one row per prompt (CLIP's 77-token limit:
    longer prompts are truncated, as in the reference scorers)."""
    import torch

    tok = getattr(processor, "tokenizer", processor)
    max_len = getattr(model.config.text_config, "max_position_embeddings", 77)
    enc = tok(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    feats = _features(model.get_text_features(**enc)).float()
    return feats / torch.linalg.vector_norm(feats, dim=-1, keepdim=True)
