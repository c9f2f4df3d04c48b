"""HPSv2.1 (Wu et al., 2023): an open_clip ViT-H/14 fine-tuned on human preference data.

score = cos(image, text) of the L2-normalized open_clip features (no logit scale), typically
0.20-0.36 - the scale the HPSv2 paper and the RL references report. Images go through
HPSv2's eval transform - resize the longest side to 224 (bicubic), zero-pad to a square,
normalize with the OpenAI CLIP mean/std - done on tensors, batched, on the reward's device.

Architecture: ``model`` is an open_clip model name (default ``ViT-H-14``, the
``laion2B-s32B-b79K`` architecture, built without pretrained weights) or the path of an
open_clip model-config JSON file. A JSON file is registered with
``open_clip.add_model_config(path)`` and used under its file stem (that is how the tiny test
config of ``marble_rewards.testing`` is found). The weights come from ``checkpoint``
(``HPS_v2.1_compressed.pt``: a dict whose ``state_dict`` holds the model's tensors).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from marble import RewardError
from marble_rewards._base import BaseReward, check_batch_size, resolve_device_dtype, resolve_file

HUB_REPO = "xswu/HPSv2"
CHECKPOINT_FILE = "HPS_v2.1_compressed.pt"
CHECKPOINT_URL = f"https://huggingface.co/{HUB_REPO}/resolve/main/{CHECKPOINT_FILE}"

_REGISTERED: set[str] = set()
_LOCK = threading.Lock()


@dataclass
class HPSv2Args:
    model: str = "ViT-H-14"  # open_clip model name, or path to an open_clip model config .json
    checkpoint: str = CHECKPOINT_FILE  # path; a missing bare file name is looked up in hub_repo
    hub_repo: str = HUB_REPO  # Hugging Face repo for a bare checkpoint name ("" = never download)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32


def resolve_model_name(reward: str, model: str) -> str:
    """An open_clip model name; a ``.json`` path is registered once and named by its stem."""
    import open_clip

    if model.endswith(".json"):
        path = os.path.realpath(os.path.expanduser(model))
        if not os.path.isfile(path):
            raise RewardError(f"reward '{reward}': open_clip model config not found: {path} (model={model!r})")
        with _LOCK:
            if path not in _REGISTERED:
                open_clip.add_model_config(path)
                _REGISTERED.add(path)
        model = os.path.splitext(os.path.basename(path))[0]
    if open_clip.get_model_config(model) is None:
        raise RewardError(
            f"reward '{reward}': unknown open_clip model {model!r}; use an open_clip model name "
            f"(HPSv2 uses 'ViT-H-14') or the path of a model config .json"
        )
    return model


def hps_transform(images, image_size: int, mean, std):
    """HPSv2's eval transform on a float batch in [0, 1]: longest side -> ``image_size``
    (bicubic, antialiased, clamped to [0, 1] as PIL's uint8 resize is), centred zero padding
    to a square, then normalization."""
    import torch
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    ratio = max(h / image_size, w / image_size)  # open_clip ResizeKeepRatio(longest=1)
    nh, nw = round(h / ratio), round(w / ratio)
    x = images
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (image_size - nh) // 2, (image_size - nw) // 2
    if (nh, nw) != (image_size, image_size):
        x = F.pad(x, (left, image_size - nw - left, top, image_size - nh - top), value=0.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class _quiet_no_pretrained:
    """Hide open_clip's "No pretrained weights loaded" warning (we load the HPS checkpoint)."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    def __enter__(self):
        self.filter = self._Filter()
        logging.getLogger().addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self.filter)
        return False


class HPSv2(BaseReward):
    name = "hpsv2"

    def __init__(self, args: HPSv2Args | None = None):
        import open_clip
        import torch

        args = args or HPSv2Args()
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device, self.dtype = resolve_device_dtype(self.name, args.device, args.dtype)
        ckpt_path = resolve_file(self.name, "checkpoint", args.checkpoint, repo=args.hub_repo, url=CHECKPOINT_URL)
        model_name = resolve_model_name(self.name, args.model)
        with _quiet_no_pretrained():  # weights come from the HPS checkpoint below
            model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu",
                                           output_dict=True)
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise RewardError(f"reward '{self.name}': cannot read checkpoint {ckpt_path}: {exc}") from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise RewardError(f"reward '{self.name}': {ckpt_path} holds no state dict (expected a 'state_dict' key)")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RewardError(
                f"reward '{self.name}': {ckpt_path} does not match the open_clip architecture "
                f"{model_name!r}: {str(exc)[:600]}"
            ) from None
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = open_clip.get_model_preprocess_cfg(model) if hasattr(open_clip, "get_model_preprocess_cfg") else {}
        self.mean = tuple(cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(cfg.get("std") or open_clip.OPENAI_DATASET_STD)

    def _score_batch(self, images, prompts, metadata):
        import torch

        pv = hps_transform(images, self.image_size, self.mean, self.std).to(self.dtype)
        tokens = self.tokenizer(prompts).to(self.device)
        img = self.model.encode_image(pv).float()
        txt = self.model.encode_text(tokens).float()
        img = img / torch.linalg.vector_norm(img, dim=-1, keepdim=True)
        txt = txt / torch.linalg.vector_norm(txt, dim=-1, keepdim=True)
        return (img * txt).sum(dim=-1)
