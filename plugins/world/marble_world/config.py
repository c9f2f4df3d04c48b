"""Argument dataclasses of the world rewards (light: no torch, no numpy)."""

from __future__ import annotations

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
