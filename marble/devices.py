"""Device and dtype names from configs ("auto", "cpu", "cuda", "cuda:1", "bf16", ...)."""

from __future__ import annotations

import os

_DTYPES = {
    "fp32": "float32", "float32": "float32",
    "fp64": "float64", "float64": "float64",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16",
}


def resolve_device(name: str | None = "auto"):
    """"auto" -> this process's GPU (LOCAL_RANK under a launcher) if CUDA is available, else CPU."""
    import torch

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def resolve_dtype(name: str | None = "auto", device=None):
    """"auto" -> bf16 on GPU, fp32 on CPU. Accepts fp32/fp64/bf16/fp16 and torch names."""
    import torch

    if name in (None, "", "auto"):
        dev = resolve_device("auto") if device is None else torch.device(device)
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    key = str(name).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: auto, {', '.join(sorted(_DTYPES))}")
    return getattr(torch, _DTYPES[key])
