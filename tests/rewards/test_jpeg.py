"""DDPO's JPEG (in)compressibility against an independent PIL computation."""

from __future__ import annotations

import io

import torch
from PIL import Image


def reference_kb(images: torch.Tensor) -> list[float]:
    """DDPO: uint8 via round, JPEG quality 95, size / 1000."""
    arr = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell() / 1000)
    return sizes


def test_jpeg_rewards_match_ddpo(build, qimages):
    images = qimages(4, 64, 96, seed=11)
    images[0] = 0.5  # a flat image compresses far better
    ref = torch.tensor(reference_kb(images), dtype=torch.float32)
    inc = build("jpeg_incompressibility", batch_size=3).score(images, ["x"] * 4, [{}] * 4)
    com = build("jpeg_compressibility").score(images, ["x"] * 4, [{}] * 4)
    assert inc.mask is None and com.mask is None
    assert torch.equal(inc.scores, ref) and torch.equal(com.scores, -ref)
    assert inc.scores[0] < inc.scores[1:].min()
    u8 = build("jpeg_compressibility").score((images * 255).round().to(torch.uint8), ["x"] * 4, [{}] * 4)
    assert torch.equal(u8.scores, com.scores)


def test_jpeg_quality_arg(build, qimages):
    images = qimages(2, 64, 64, seed=12)
    hi = build("jpeg_incompressibility").score(images, ["x", "y"], [{}, {}]).scores
    lo = build("jpeg_incompressibility", quality=30).score(images, ["x", "y"], [{}, {}]).scores
    assert (lo < hi).all()


def test_jpeg_conformance(build):
    from marble.testing import check_reward

    check_reward(build("jpeg_compressibility"))
    check_reward(build("jpeg_incompressibility"))


def test_empty_batch(build):
    out = build("jpeg_compressibility").score(torch.zeros(0, 3, 8, 8), [], [])
    assert out.scores.shape == (0,) and out.scores.dtype == torch.float32
