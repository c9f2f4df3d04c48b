"""Shared fixtures for the reward plugin tests: tiny random checkpoints in the real formats,
built once per session, and a helper that builds a reward through the plugin host."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """Args for every reward, pointing at tiny random checkpoints (see marble_rewards.testing)."""
    from marble_rewards.testing import make_all

    return make_all(tmp_path_factory.mktemp("reward-ckpts"))


@pytest.fixture(scope="session")
def build():
    """build(name, **args) -> the reward, built through marble's plugin host on the CPU."""
    from marble.host import build_reward

    def _build(name: str, **args):
        args.setdefault("device", "cpu")
        return build_reward(name, args)

    return _build


@pytest.fixture(scope="session")
def qimages():
    """qimages(n, h, w, seed=0): see ``quantized_images``."""
    return quantized_images


def quantized_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] whose values are exactly k / 255 (so uint8 and float agree), with
    structure (smooth gradients plus noise) rather than pure noise."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(n, 3, 1, 1, generator=g)
    base = 0.5 + 0.35 * torch.sin(6.28 * (xx * (1 + 2 * phase) + yy * phase * 3 + phase))
    noise = 0.15 * torch.rand(n, 3, h, w, generator=g)
    u8 = ((base + noise).clamp(0, 1) * 255).round()
    return u8 / 255.0
