"""Verifiable rewards of the demo world.

Each reads what the sample's prompt asked for from its metadata (``color``, ``count``,
``position``; see :mod:`marble_world.prompts`) and checks the pixels
(:mod:`marble_world.analysis`). A sample whose prompt does not ask for the attribute gets
mask False (its score, 0, is ignored). Scores lie in [0, 1]:

* ``world_color``    share of foreground pixels of the asked colour;
* ``world_count``    1 / (1 + |objects found - count asked|);
* ``world_position`` share of foreground pixels inside the asked region;
* ``world_contrast`` RMS luminance contrast (2 x std), for every sample: an "aesthetic" that
  pulls against the others (it prefers large black/white areas to small coloured objects).
"""

from __future__ import annotations

from typing import Any, Sequence

from marble import RewardError, RewardOutput
from marble_world.config import ContrastArgs, CountArgs, WorldRewardArgs
from marble_world.world import COLORS, COUNTS, POSITIONS


def _as_numpy(images: Any):
    import numpy as np

    if hasattr(images, "detach"):
        images = images.detach().to("cpu").float().numpy()
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise RewardError(f"images must be N x 3 x H x W, got shape {tuple(arr.shape)}")
    return np.clip(arr, 0.0, 1.0).transpose(0, 2, 3, 1)


def _output(scores, mask):
    import torch

    return RewardOutput(
        scores=torch.tensor(scores, dtype=torch.float32),
        mask=None if mask is None else torch.tensor(mask, dtype=torch.bool),
    )


class _AttributeReward:
    """Base: one metadata attribute, masked out where the prompt does not ask for it."""

    name = ""
    field = ""
    allowed: tuple = ()
    device = "cpu"
    batch_size = 256

    def __init__(self, args: WorldRewardArgs | None = None):
        self.args = args if args is not None else self._default_args()

    def _default_args(self):
        return WorldRewardArgs()

    def _wanted(self, prompt: str, meta: dict | None, i: int):
        meta = dict(meta or {})
        if self.args.parse_prompts and "kind" not in meta and self.field not in meta:
            from marble_world.prompts import parse

            try:
                meta = parse(prompt)
            except ValueError:
                return None
        value = meta.get(self.field)
        if value is None:
            return None
        if self.field == "count":
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = str(value)
        if value not in self.allowed:
            raise RewardError(
                f"{self.name}: sample {i} asks for {self.field}={value!r}; known values: {list(self.allowed)}"
            )
        return value

    def score(self, images: Any, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> RewardOutput:
        arr = _as_numpy(images)
        n = arr.shape[0]
        if len(prompts) != n:
            raise RewardError(f"{self.name}: {n} images but {len(prompts)} prompts")
        if metadata is None:
            metadata = [{}] * n
        if len(metadata) != n:
            raise RewardError(f"{self.name}: {n} images but {len(metadata)} metadata entries")
        scores, mask = [], []
        for i in range(n):
            want = self._wanted(prompts[i], metadata[i], i)
            if want is None:
                scores.append(0.0)
                mask.append(False)
            else:
                scores.append(self._check(arr[i], want))
                mask.append(True)
        return _output(scores, mask)

    def _check(self, img, want) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class ColorReward(_AttributeReward):
    name, field, allowed = "world_color", "color", tuple(COLORS)

    def _check(self, img, want):
        from marble_world.analysis import color_fraction

        return color_fraction(img, want, self.args.fg_threshold)


class CountReward(_AttributeReward):
    name, field, allowed = "world_count", "count", tuple(COUNTS)

    def _default_args(self):
        return CountArgs()

    def _check(self, img, want):
        from marble_world.analysis import count_objects

        min_area = getattr(self.args, "min_area", CountArgs.min_area)
        found = count_objects(img, self.args.fg_threshold, min_area)
        return 1.0 / (1.0 + abs(found - want))


class PositionReward(_AttributeReward):
    name, field, allowed = "world_position", "position", tuple(POSITIONS)

    def _check(self, img, want):
        from marble_world.analysis import region_fraction

        return region_fraction(img, want, self.args.fg_threshold)


class ContrastReward:
    """RMS luminance contrast of every image (mask None: applies to all samples)."""

    name = "world_contrast"
    device = "cpu"
    batch_size = 256

    def __init__(self, args: ContrastArgs | None = None):
        self.args = args if args is not None else ContrastArgs()

    def score(self, images: Any, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> RewardOutput:
        from marble_world.analysis import luminance_contrast

        arr = _as_numpy(images)
        if len(prompts) != arr.shape[0]:
            raise RewardError(f"{self.name}: {arr.shape[0]} images but {len(prompts)} prompts")
        return _output([luminance_contrast(a) for a in arr], None)
