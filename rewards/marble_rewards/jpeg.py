"""DDPO's toy rewards: the size of the image saved as JPEG at quality 95, in kB (1000 bytes).

``jpeg_incompressibility`` = +size (rewards detail and noise), ``jpeg_compressibility`` =
-size (rewards flat, simple images). Images are quantized to uint8 with round() first, as in
DDPO. Only PIL and numpy; the prompt is not used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from marble import RewardError
from marble_rewards._base import BaseReward, check_batch_size


@dataclass
class JpegArgs:
    quality: int = 95  # JPEG quality (DDPO: 95)
    device: str = "auto"  # unused: PIL encodes on the CPU
    dtype: str = "auto"  # unused
    batch_size: int = 64


def jpeg_kb(image_hwc_uint8, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of one H x W x 3 uint8 RGB array saved as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_hwc_uint8).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


class _JpegSize(BaseReward):
    sign = 1.0

    def __init__(self, args: JpegArgs | None = None):
        import torch

        args = args or JpegArgs()
        if not 1 <= args.quality <= 100:
            raise RewardError(f"reward '{self.name}': quality must be in 1..100, got {args.quality}")
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def _score_batch(self, images, prompts, metadata):
        import torch

        arr = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        sizes = [jpeg_kb(a, self.args.quality) for a in arr]
        return torch.tensor(sizes, dtype=torch.float32) * self.sign


class JpegIncompressibility(_JpegSize):
    name = "jpeg_incompressibility"
    sign = 1.0


class JpegCompressibility(_JpegSize):
    name = "jpeg_compressibility"
    sign = -1.0
