"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

score = logit_scale.exp() * cos(image, text), times ``scale``. With the real checkpoint
logit_scale.exp() is about 100 and raw scores are about 20-24 (the number papers report);
the training convention (Flow-GRPO, DiffusionNFT) divides by 26, our default ``scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

from marble_rewards._base import BaseReward, check_batch_size, resolve_device_dtype

MODEL_HUB_ID = "yuvalkirstain/PickScore_v1"
PROCESSOR_HUB_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class PickScoreArgs:
    model: str = MODEL_HUB_ID  # CLIPModel folder (save_pretrained layout) or hub id
    processor: str = PROCESSOR_HUB_ID  # CLIPProcessor folder or hub id
    scale: float = 1.0 / 26.0  # 1/26: training convention; 1.0: the raw, paper-reported PickScore
    device: str = "auto"
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    batch_size: int = 32


class PickScore(BaseReward):
    name = "pickscore"

    def __init__(self, args: PickScoreArgs | None = None):
        from marble_rewards._clip import load_clip_model, load_clip_processor

        args = args or PickScoreArgs()
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device, self.dtype = resolve_device_dtype(self.name, args.device, args.dtype)
        self.model = load_clip_model(self.name, "model", args.model, self.device, self.dtype, hub_id=MODEL_HUB_ID)
        self.processor = load_clip_processor(self.name, "processor", args.processor, hub_id=PROCESSOR_HUB_ID)

    def _score_batch(self, images, prompts, metadata):
        from marble_rewards._clip import image_embeds, text_embeds

        img = image_embeds(self.model, self.processor, images)
        txt = text_embeds(self.model, self.processor, prompts, self.device)
        cos = (img * txt).sum(dim=-1)  # per-sample cosine: no N x N matrix
        return self.model.marble_logit_scale * cos * self.args.scale  # exp(logit_scale), taken in fp32
