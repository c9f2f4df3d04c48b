"""Argument dataclasses of the world rewards (light: no torch, no numpy)."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass
class WorldRewardArgs:
    """fg_threshold: a pixel is foreground when a channel differs from the background colour by
    more than this (0-1). parse_prompts: when a sample's metadata has no world fields, read them
    from the prompt if it is a world caption (so plain-text prompt files work too)."""

    fg_threshold: float = 0.25
    parse_prompts: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fg_threshold < 1.0:
            raise ValueError(f"fg_threshold must be in (0, 1), got {self.fg_threshold!r}")


@dataclass
class CountArgs(WorldRewardArgs):
    """min_area: smallest object that counts, in pixels of a 64 x 64 image (scaled with size)."""

    min_area: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_area <= 0:
            raise ValueError(f"min_area must be > 0, got {self.min_area!r}")


@dataclass
class ContrastArgs:
    """No options: RMS luminance contrast of the whole image."""


def world_model_path() -> str:
    """The committed pretrained pipeline folder (a StableDiffusion3Pipeline save_pretrained)."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")


@functools.lru_cache(maxsize=None)
def world_backbone_args():
    """The args dataclass of the ``world-sd3`` backbone: ``sd3`` args with the world's defaults.

    None when the diffusers backbone plugin (marble_diffusers) is not installed."""
    from dataclasses import dataclass

    try:
        from marble_diffusers.args import SD3Args
    except ImportError:
        return None

    @dataclass
    class WorldSD3Args(SD3Args):
        """``sd3`` on the demo world's pretrained 64 px model (model "" = the packaged folder)."""

        model: str = ""
        resolution: int = 64
        dtype: str = "fp32"
        lora_rank: int = 8
        lora_alpha: float = 16.0
        max_sequence_length: int = 24
        decode_batch_size: int = 64

    return WorldSD3Args
