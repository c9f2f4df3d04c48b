"""``marble score``: score image files with one installed reward.

    marble score REWARD IMAGE... (--prompt TEXT | --prompts-file FILE) [--args k=v ...] [--json]

The reward is built through the plugin host exactly as a training run builds it (args are
validated against the reward's args dataclass). One line per image: the score, or ``n/a``
where the reward does not apply (its mask is False), then the file name. ``--json`` prints a
JSON list of ``{"image", "prompt", "score"}`` (score null where masked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from marble.errors import ConfigError, MarbleError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``score`` sub-command to the ``marble`` CLI's subparsers."""
    p = subparsers.add_parser(
        "score",
        help="score image files with one reward",
        description="Score image files with one installed reward (see 'marble rewards'). "
                    "Example: marble score pickscore a.png b.png --prompt 'a cat' --args device=cpu",
    )
    p.add_argument("reward", help="reward name, as listed by 'marble rewards'")
    p.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt for every image")
    src.add_argument("--prompts-file", help="text file: one prompt per line, one line per image "
                                            "(or a single line for all images)")
    p.add_argument("--args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="reward args, e.g. device=cpu batch_size=8 model=/path/to/folder ('key=' is an empty string)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    p.set_defaults(func=run)
    return p


def parse_kv(items: list[str]) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values typed as YAML scalars)."""
    from omegaconf import OmegaConf

    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--args item {item!r} must look like key=value (for example device=cpu)")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))
    except Exception as exc:  # noqa: BLE001 - omegaconf grammar errors
        raise ConfigError(f"bad --args: {exc}") from None
    return {k: ("" if v is None else v) for k, v in parsed.items()}


def read_prompts(args: argparse.Namespace, n: int) -> list[str]:
    if args.prompt is not None:
        return [args.prompt] * n
    path = args.prompts_file
    if not os.path.isfile(path):
        raise MarbleError(f"prompts file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) == 1:
        return lines * n
    if len(lines) != n:
        raise MarbleError(f"{path} has {len(lines)} prompts for {n} images: give one line per image, or one line for all")
    return lines


def load_images(paths: list[str]) -> list[Any]:
    """Image files -> list of uint8 tensors 3 x H x W (RGB)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise MarbleError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise MarbleError(f"cannot read image {path}: {exc}") from None
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
    return out


def score_images(reward: Any, images: list[Any], prompts: list[str]) -> list[float | None]:
    """Score images of possibly different sizes: one ``score`` call per size, order kept."""
    import torch

    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    result: list[float | None] = [None] * len(images)
    for idx in groups.values():
        batch = torch.stack([images[i] for i in idx])
        out = reward.score(batch, [prompts[i] for i in idx], [{} for _ in idx])
        scores = out.scores.tolist()
        mask = out.mask.tolist() if out.mask is not None else [True] * len(idx)
        for k, i in enumerate(idx):
            result[i] = float(format(scores[k], ".7g")) if mask[k] else None  # float32 digits only
    return result


def _build(name: str, args: dict) -> Any:
    from marble.host import build_reward

    return build_reward(name, args)


def run(args: argparse.Namespace) -> int:
    """Run ``marble score``; returns the exit code (user errors raise MarbleError)."""
    images = load_images(args.images)
    prompts = read_prompts(args, len(images))
    reward = _build(args.reward, parse_kv(args.args or []))
    scores = score_images(reward, images, prompts)
    if args.json:
        rows = [{"image": p, "prompt": t, "score": s} for p, t, s in zip(args.images, prompts, scores)]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for path, s in zip(args.images, scores):
            print(f"{'n/a' if s is None else format(s, '.6g')}\t{path}")
    return 0
