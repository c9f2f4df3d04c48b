"""OCR reward (Flow-GRPO's text-rendering reward): does the image show the quoted text?

target = the text between the first pair of double quotes (") in the prompt. The recognized
text (all lines RapidOCR reads with confidence >= ``text_score``, joined in reading order) and
the target are lower-cased with whitespace removed; then

    reward = 1                                                  if target is a substring
    reward = 1 - min(Levenshtein(recognized, target), len(target)) / len(target)   otherwise

in [0, 1]. Prompts without a (non-empty) quoted text get mask False and score 0 - never an
error. Punctuation is kept on both sides, as in the reference.

Recognition: RapidOCR with the PaddleOCR (PP-OCR) ONNX models that ship inside its wheel, so it
runs offline. Detection resizes the longest side to at most ``det_limit_side_len`` (960, as
PaddleOCR's default), no angle classifier, lines below confidence 0.5 dropped (PaddleOCR's
``drop_score``): the settings of the PaddleOCR pipeline the reference uses.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from marble import RewardError
from marble_rewards._base import BaseReward, check_batch_size

log = logging.getLogger(__name__)


@dataclass
class OCRArgs:
    device: str = "auto"  # auto: CUDA if onnxruntime offers it, else CPU; "cpu"; "cuda" / "cuda:N"
    dtype: str = "auto"  # unused: the ONNX models run in fp32
    batch_size: int = 16  # images converted per step (recognition runs image by image)
    text_score: float = 0.5  # drop recognized lines below this confidence
    det_limit_side_len: int = 960  # detection input: longest side at most this many pixels
    use_angle_cls: bool = False  # run the 0/180 degree text-direction classifier
    num_threads: int = -1  # onnxruntime intra-op threads (-1: onnxruntime's default)
    det_model: str = ""  # detection .onnx; "" = the model bundled with rapidocr
    rec_model: str = ""  # recognition .onnx; "" = the model bundled with rapidocr


# ---------------------------------------------------------------------- the formula
def extract_target(prompt: str) -> str | None:
    """The text between the first pair of double quotes, or None if there is no pair."""
    first = prompt.find('"')
    if first < 0:
        return None
    second = prompt.find('"', first + 1)
    if second < 0:
        return None
    return prompt[first + 1:second]


def normalize(text: str) -> str:
    """Lower-case and drop all whitespace."""
    return "".join(text.lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_reward(recognized: str, target: str) -> float | None:
    """The reward for recognized text against the quoted target; None if the target is empty."""
    t = normalize(target)
    if not t:
        return None
    r = normalize(recognized)
    if t in r:
        return 1.0
    return 1.0 - min(levenshtein(r, t), len(t)) / len(t)


# ---------------------------------------------------------------------- the reward
class OCRReward(BaseReward):
    name = "ocr"

    def __init__(self, args: OCRArgs | None = None):
        import torch

        args = args or OCRArgs()
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device = torch.device("cpu")  # images are converted to numpy on the CPU
        self.dtype = torch.float32
        if not 0.0 <= args.text_score <= 1.0:
            raise RewardError(f"reward 'ocr': text_score must be in [0, 1], got {args.text_score}")
        if args.det_limit_side_len < 32:
            raise RewardError(f"reward 'ocr': det_limit_side_len must be >= 32, got {args.det_limit_side_len}")
        try:
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise RewardError(
                f"reward 'ocr' needs rapidocr and onnxruntime: pip install 'marble-rewards[ocr]' ({exc})"
            ) from None
        use_cuda, device_id = self._pick_device(args.device, onnxruntime.get_available_providers())
        params = {
            "Global.use_cls": bool(args.use_angle_cls),
            "Global.text_score": float(args.text_score),
            "Global.log_level": "error",  # "no text detected" is not worth a warning
            "Det.limit_type": "max",
            "Det.limit_side_len": int(args.det_limit_side_len),
            "EngineConfig.onnxruntime.intra_op_num_threads": int(args.num_threads),
            "EngineConfig.onnxruntime.use_cuda": use_cuda,
            "EngineConfig.onnxruntime.cuda_ep_cfg.device_id": device_id,
        }
        for arg, key in (("det_model", "Det.model_path"), ("rec_model", "Rec.model_path")):
            value = getattr(args, arg)
            if value:
                path = os.path.abspath(os.path.expanduser(value))
                if not os.path.isfile(path):
                    raise RewardError(
                        f"reward 'ocr': {arg} file not found: {path}. Leave {arg} empty to use the PP-OCR "
                        "ONNX model bundled with rapidocr, or export one with PaddleOCR's paddle2onnx"
                    )
                params[key] = path
        self.engine = RapidOCR(params=params)
        self._warned = False

    @staticmethod
    def _pick_device(device: str, providers: list[str]) -> tuple[bool, int]:
        has_cuda = "CUDAExecutionProvider" in providers
        if device in ("", "auto"):
            if not has_cuda:
                return False, 0
            from marble.devices import resolve_device

            dev = resolve_device("auto")  # this process's GPU (LOCAL_RANK) or the CPU
            return dev.type == "cuda", dev.index or 0
        if device == "cpu":
            return False, 0
        if device.startswith("cuda"):
            if not has_cuda:
                raise RewardError(
                    f"reward 'ocr': device={device!r} needs onnxruntime with the CUDA execution provider "
                    f"(pip install onnxruntime-gpu); available providers: {providers}. Use device=cpu"
                )
            _, _, idx = device.partition(":")
            return True, int(idx or 0)
        raise RewardError(f"reward 'ocr': unknown device {device!r}; use auto, cpu, cuda or cuda:N")

    def recognize(self, image_rgb_uint8) -> str:
        """All text RapidOCR reads in one H x W x 3 RGB uint8 array, joined in reading order."""
        bgr = image_rgb_uint8[..., ::-1].copy()  # RapidOCR takes arrays in OpenCV's BGR order
        try:
            result = self.engine(bgr)
        except Exception as exc:  # noqa: BLE001 - as the reference: an OCR failure reads as no text
            if not self._warned:
                log.warning("reward 'ocr': RapidOCR failed on an image (%s: %s); scoring it as no text",
                            type(exc).__name__, exc)
                self._warned = True
            return ""
        txts = getattr(result, "txts", None) or ()
        return "".join(txts)

    def _score_batch(self, images, prompts, metadata):
        import torch

        targets = [extract_target(p) for p in prompts]
        scores = torch.zeros(len(prompts), dtype=torch.float32)
        mask = torch.zeros(len(prompts), dtype=torch.bool)
        todo = [i for i, t in enumerate(targets) if t is not None and normalize(t)]
        if todo:
            arr = (images[todo] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for k, i in enumerate(todo):
                value = ocr_reward(self.recognize(arr[k]), targets[i])
                scores[i] = value
                mask[i] = True
        return scores, mask
