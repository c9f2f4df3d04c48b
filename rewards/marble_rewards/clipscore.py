"""CLIPScore as the RL references use it: the cosine similarity of CLIP ViT-L/14 image and
text features (= ``logits_per_image / 100`` for ``openai/clip-vit-large-patch14``, whose
logit scale is 100). Typical values 0.20-0.35.

Not the CLIPScore paper's ``2.5 * max(cos, 0)`` with ViT-B/32: multiply by ``scale`` if you
want that convention's 2.5 factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from marble_rewards._base import BaseReward, check_batch_size, resolve_device_dtype

HUB_ID = "openai/clip-vit-large-patch14"


@dataclass
class ClipScoreArgs:
    model: str = HUB_ID  # CLIPModel folder or hub id
    processor: str = HUB_ID  # CLIPProcessor folder or hub id (the same folder for OpenAI CLIP)
    scale: float = 1.0  # multiplies the cosine
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32


class ClipScore(BaseReward):
    name = "clipscore"

    def __init__(self, args: ClipScoreArgs | None = None):
        from marble_rewards._clip import load_clip_model, load_clip_processor

        args = args or ClipScoreArgs()
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device, self.dtype = resolve_device_dtype(self.name, args.device, args.dtype)
        self.model = load_clip_model(self.name, "model", args.model, self.device, self.dtype, hub_id=HUB_ID)
        self.processor = load_clip_processor(self.name, "processor", args.processor, hub_id=HUB_ID)

    def _score_batch(self, images, prompts, metadata):
        from marble_rewards._clip import image_embeds, text_embeds

        img = image_embeds(self.model, self.processor, images)
        txt = text_embeds(self.model, self.processor, prompts, self.device)
        return (img * txt).sum(dim=-1) * self.args.scale
