"""Entry point of marble-rewards: registers every first-party reward.

Light on purpose: only dataclasses are imported here (no torch, transformers, open_clip or
rapidocr), so ``marble rewards`` lists instantly. Factories are lazy "module:attr" strings.
"""

from marble import RewardSpec, hookimpl

from marble_rewards.aesthetic import AestheticArgs
from marble_rewards.clipscore import ClipScoreArgs
from marble_rewards.hpsv2 import HPSv2Args
from marble_rewards.jpeg import JpegArgs
from marble_rewards.ocr import OCRArgs
from marble_rewards.pickscore import PickScoreArgs


@hookimpl
def marble_register_rewards():
    return [
        RewardSpec("pickscore", "marble_rewards.pickscore:PickScore", PickScoreArgs,
                   "PickScore v1 (CLIP ViT-H/14 preference model): logit_scale * cosine, /26 by default"),
        RewardSpec("hpsv2", "marble_rewards.hpsv2:HPSv2", HPSv2Args,
                   "HPSv2.1 human preference score (open_clip ViT-H-14): cosine, about 0.20-0.36"),
        RewardSpec("aesthetic", "marble_rewards.aesthetic:Aesthetic", AestheticArgs,
                   "LAION improved aesthetic predictor on CLIP ViT-L/14: 1-10, typical 5-6.5"),
        RewardSpec("clipscore", "marble_rewards.clipscore:ClipScore", ClipScoreArgs,
                   "CLIP ViT-L/14 image-text cosine similarity, about 0.20-0.35"),
        RewardSpec("ocr", "marble_rewards.ocr:OCRReward", OCRArgs,
                   "OCR (RapidOCR): 1 - normalized edit distance to the prompt's quoted text; masked without quotes"),
        RewardSpec("jpeg_compressibility", "marble_rewards.jpeg:JpegCompressibility", JpegArgs,
                   "DDPO toy reward: minus the JPEG (quality 95) size in kB"),
        RewardSpec("jpeg_incompressibility", "marble_rewards.jpeg:JpegIncompressibility", JpegArgs,
                   "DDPO toy reward: the JPEG (quality 95) size in kB"),
    ]
