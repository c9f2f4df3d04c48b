"""The caption grammar of the demo world, as a prompt set.

Shapes captions::

    [count] [color] shape[s] [position]
    "two red circles on the left", "a blue square in the center",
    "three triangles at the top", "some yellow circles"

Each attribute is asked for or not. Asked attributes go into the sample's metadata (the
rewards read them); an attribute that is not asked is absent from the metadata, so the reward
for it is masked out. Count not asked reads "some <shape>s" (the picture then holds 2 or 3).

Text captions::

    a sign that says "cat"          metadata {"kind": "text", "word": "cat"}

(the `ocr` reward of the rewards plugin reads the word between the first pair of quotes).

CLI: ``python -m marble_world.prompts --out prompts.jsonl --n 1000 --seed 0`` writes one JSON
object per line: ``{"prompt": ..., "kind": ..., "color": ..., "shape": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from marble_world.world import COLORS, COUNTS, POSITIONS, SHAPES, WORDS, Scene, sample_scene

COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# How often each attribute is asked for in shapes captions.
P_ASK = {"color": 0.85, "count": 0.85, "position": 0.75}

DATA_DIR = Path(__file__).parent / "data"


def prompt_file(split: str) -> Path:
    """Path of a committed prompt set: ``"train"`` (1000 lines) or ``"eval"`` (64 lines)."""
    path = DATA_DIR / f"prompts_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no prompt set {split!r} at {path}; expected 'train' or 'eval'")
    return path


def caption(meta: dict) -> str:
    """The caption for a metadata dict (the inverse of :func:`parse`)."""
    if meta.get("kind") == "text":
        return f'a sign that says "{meta["word"]}"'
    shape = meta["shape"]
    count = meta.get("count")
    words = []
    if count is None:
        words.append("some")
    else:
        words.append(COUNT_WORDS[int(count)])
    if "color" in meta:
        words.append(meta["color"])
    words.append(shape if count == 1 else shape + "s")
    if "position" in meta:
        words.append(POSITION_PHRASES[meta["position"]])
    return " ".join(words)


def sample_metadata(rng: random.Random, text_fraction: float = 0.25) -> dict:
    """Draw what one prompt asks for (shapes or text)."""
    if rng.random() < text_fraction:
        return {"kind": "text", "word": rng.choice(WORDS)}
    meta: dict = {"kind": "shapes", "shape": rng.choice(SHAPES)}
    if rng.random() < P_ASK["count"]:
        meta["count"] = rng.choice(COUNTS)
    if rng.random() < P_ASK["color"]:
        meta["color"] = rng.choice(sorted(COLORS))
    if rng.random() < P_ASK["position"]:
        meta["position"] = rng.choice(POSITIONS)
    return meta


def scene_for(meta: dict, rng: random.Random, size: int = 64) -> Scene:
    """A picture that satisfies ``meta`` (unasked attributes drawn from ``rng``)."""
    if meta.get("kind") == "text":
        return sample_scene(rng, size, kind="text", word=meta["word"])
    count = meta.get("count")
    if count is None:
        count = rng.choice((2, 3))  # "some circles"
    return sample_scene(
        rng, size, kind="shapes", color=meta.get("color"), shape=meta["shape"], count=int(count),
        position=meta.get("position"),
    )


def make_prompts(n: int, seed: int = 0, text_fraction: float = 0.25) -> list[dict]:
    """``n`` prompt records ``{"prompt": caption, **metadata}`` drawn with ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        meta = sample_metadata(rng, text_fraction)
        out.append({"prompt": caption(meta), **meta})
    return out


def sample_example(rng: random.Random, size: int = 64, text_fraction: float = 0.25):
    """One training example: (caption, metadata, scene) with the scene matching the caption."""
    meta = sample_metadata(rng, text_fraction)
    return caption(meta), meta, scene_for(meta, rng, size)


def parse(prompt: str) -> dict:
    """Metadata from a caption of this grammar (ValueError if it is not one)."""
    p = prompt.strip()
    if p.startswith('a sign that says "') and p.endswith('"'):
        return {"kind": "text", "word": p[len('a sign that says "') : -1]}
    words = p.split()
    meta: dict = {"kind": "shapes"}
    for pos, phrase in POSITION_PHRASES.items():
        if p.endswith(" " + phrase):
            meta["position"] = pos
            words = words[: -len(phrase.split())]
            break
    if not words:
        raise ValueError(f"not a world caption: {prompt!r}")
    first = words.pop(0)
    inverse = {v: k for k, v in COUNT_WORDS.items()}
    if first in inverse:
        meta["count"] = inverse[first]
    elif first != "some":
        raise ValueError(f"not a world caption: {prompt!r}")
    if words and words[0] in COLORS:
        meta["color"] = words.pop(0)
    if len(words) != 1:
        raise ValueError(f"not a world caption: {prompt!r}")
    noun = words[0]
    shape = noun[:-1] if noun.endswith("s") and noun[:-1] in SHAPES else noun
    if shape not in SHAPES:
        raise ValueError(f"not a world caption: {prompt!r} (unknown shape {noun!r})")
    meta["shape"] = shape
    return meta


def write_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marble_world.prompts", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output JSONL file")
    ap.add_argument("--n", type=int, default=1000, help="number of prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-fraction", type=float, default=0.25, help="share of 'a sign that says' prompts")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("--n must be >= 1")
    if not 0.0 <= a.text_fraction <= 1.0:
        ap.error("--text-fraction must be in [0, 1]")
    write_jsonl(make_prompts(a.n, a.seed, a.text_fraction), a.out)
    print(f"wrote {a.n} prompts to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
