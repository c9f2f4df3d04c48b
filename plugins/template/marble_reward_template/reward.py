"""The reward itself. Heavy imports (torch) live here, imported only when the reward is built."""

from __future__ import annotations

import torch

from marble import RewardError, RewardOutput

from marble_reward_template.args import BrightnessArgs


class BrightnessReward:
    def __init__(self, args: BrightnessArgs):
        if not 0.0 <= args.target <= 1.0:
            raise RewardError(f"reward 'brightness': target must be in [0, 1], got {args.target}")
        self.args = args

    def score(self, images, prompts, metadata) -> RewardOutput:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise RewardError("reward 'brightness': images must be a tensor N x 3 x H x W")
        if len(prompts) != images.shape[0]:
            raise RewardError(f"reward 'brightness': {images.shape[0]} images but {len(prompts)} prompts")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))
        scores = 1.0 - (luma - self.args.target).abs()
        mask = None
        if self.args.only_if_word:
            mask = torch.tensor([self.args.only_if_word in p for p in prompts], dtype=torch.bool)
        return RewardOutput(scores=scores.cpu(), mask=mask)
