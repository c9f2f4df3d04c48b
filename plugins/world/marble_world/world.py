"""The embedded demo world: plain backgrounds, coloured shapes, and signs with words.

A :class:`Scene` says everything that is in a picture; :func:`sample_scene` draws one from a
seeded ``random.Random``; :func:`render` paints it (PIL, no torch). Captions and the metadata
the rewards read come from :mod:`marble_world.prompts`; this module only knows pictures.

Geometry (64 px default; every number scales with ``size``):

* positions are regions of the canvas: ``left``/``right`` halves, ``top``/``bottom`` halves,
  ``center`` the middle square [W/4, 3W/4]^2. Objects lie fully inside their region.
* objects of one scene never touch (a gap of at least ``GAP`` px between bounding boxes), so
  connected components of the foreground are the objects.
* backgrounds are neutral (white, light grey, dark grey, black); object colours are saturated,
  so "foreground" = far from the background colour and colour = nearest palette entry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
}
# Neutral classes the colour classifier also knows (a grey blob is not "red").
NEUTRALS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "lightgrey": (205, 205, 205),
    "darkgrey": (70, 70, 70),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
COUNTS = (1, 2, 3)
# Short words for signs: 3-5 letters, no confusable I/l pairs, all read exactly by RapidOCR
# at 64 px (measured in tests/world/test_ocr_legibility.py).
WORDS = (
    "cat", "dog", "sun", "car", "box", "red", "map", "cup", "hat", "bus",
    "fox", "owl", "pen", "key", "sea", "tree", "fish", "bird", "moon", "star",
    "cake", "door", "rain", "home", "book", "frog", "ship", "rose", "snow", "wave",
    "apple", "house", "water", "tiger", "bread", "mouse", "grape", "zebra", "queen", "storm",
)

GAP = 3  # px at 64 px between object bounding boxes


@dataclass
class Shape:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels


@dataclass
class Scene:
    """Everything in one picture. ``kind`` is "shapes" or "text"."""

    kind: str
    size: int
    background: str
    shapes: list[Shape] = field(default_factory=list)
    position: str | None = None  # region every shape lies in (None: anywhere)
    word: str | None = None
    sign_box: tuple[int, int, int, int] | None = None

    @property
    def count(self) -> int:
        return len(self.shapes)


def region_box(position: str | None, size: int) -> tuple[int, int, int, int]:
    """The region (x0, y0, x1, y1) a position word names, in pixels; None = whole canvas."""
    h = size // 2
    q = size // 4
    boxes = {
        None: (0, 0, size, size),
        "left": (0, 0, h, size),
        "right": (h, 0, size, size),
        "top": (0, 0, size, h),
        "bottom": (0, h, size, size),
        "center": (q, q, size - q, size - q),
    }
    if position not in boxes:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")
    return boxes[position]


def _place(rng: random.Random, n: int, region: tuple[int, int, int, int], size: int) -> list[tuple[int, int, int, int]]:
    """n non-touching square boxes inside region (rejection sampling, shrinking on failure)."""
    x0, y0, x1, y1 = region
    margin = max(1, size // 32)
    gap = max(1, round(GAP * size / 64))
    lo, hi = round(11 * size / 64), round(17 * size / 64)
    # in a small region (the centre) cap the size so n objects fit side by side
    w, h = x1 - x0 - 2 * margin, y1 - y0 - 2 * margin
    while hi > round(8 * size / 64) and ((w + gap) // (hi + gap)) * ((h + gap) // (hi + gap)) < n:
        hi -= 1
    lo = min(lo, hi)
    for attempt in range(200):
        shrink = attempt // 40
        s_hi = max(round(8 * size / 64), hi - 2 * shrink)
        s_lo = min(s_hi, max(round(8 * size / 64), lo - 2 * shrink))
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            s = rng.randint(s_lo, s_hi)
            ax0, ay0, ax1, ay1 = x0 + margin, y0 + margin, x1 - margin - s, y1 - margin - s
            if ax1 < ax0 or ay1 < ay0:
                break
            for _try in range(30):
                bx, by = rng.randint(ax0, ax1), rng.randint(ay0, ay1)
                cand = (bx, by, bx + s, by + s)
                if all(
                    cand[0] >= b[2] + gap or b[0] >= cand[2] + gap or cand[1] >= b[3] + gap or b[1] >= cand[3] + gap
                    for b in boxes
                ):
                    boxes.append(cand)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} objects in region {region} at size {size}")


def sample_scene(
    rng: random.Random,
    size: int = 64,
    *,
    kind: str | None = None,
    color: str | None = None,
    shape: str | None = None,
    count: int | None = None,
    position: str | None = None,
    word: str | None = None,
    text_fraction: float = 0.25,
) -> Scene:
    """Draw a scene. Any attribute given is fixed; the others are drawn from ``rng``.

    For a shapes scene, ``position=None`` still places the objects somewhere (anywhere)."""
    if kind is None:
        kind = "text" if (word is not None or rng.random() < text_fraction) else "shapes"
    background = rng.choice(sorted(BACKGROUNDS))
    if kind == "text":
        word = word if word is not None else rng.choice(WORDS)
        return _text_scene(rng, size, background, word)
    if kind != "shapes":
        raise ValueError(f"kind must be 'shapes' or 'text', got {kind!r}")
    color = color if color is not None else rng.choice(sorted(COLORS))
    shape = shape if shape is not None else rng.choice(SHAPES)
    count = count if count is not None else rng.choice(COUNTS)
    for name, value, allowed in (("color", color, COLORS), ("shape", shape, SHAPES), ("count", count, COUNTS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")
    boxes = _place(rng, count, region_box(position, size), size)
    return Scene(
        kind="shapes",
        size=size,
        background=background,
        shapes=[Shape(shape, color, b) for b in boxes],
        position=position,
    )


def _text_scene(rng: random.Random, size: int, background: str, word: str) -> Scene:
    # A light sign (white, or light grey on white backgrounds) filling most of the canvas,
    # with the word in dark capitals; jittered by a few pixels.
    j = max(1, size // 32)
    x0, y0 = rng.randint(1, 2 * j), rng.randint(size // 4 - 2 * j, size // 4 + 2 * j)
    x1, y1 = size - rng.randint(1, 2 * j), y0 + size // 2
    return Scene(kind="text", size=size, background=background, word=word, sign_box=(x0, y0, x1, y1))


def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def render(scene: Scene):
    """Paint a scene: a PIL RGB image of ``scene.size`` x ``scene.size``."""
    from PIL import Image, ImageDraw

    size = scene.size
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.shapes:
        rgb = COLORS[obj.color]
        x0, y0, x1, y1 = obj.box
        if obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.shape == "triangle":
            draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    if scene.kind == "text":
        sx0, sy0, sx1, sy1 = scene.sign_box
        sign = (255, 255, 255) if scene.background != "white" else (215, 215, 215)
        draw.rectangle((sx0, sy0, sx1 - 1, sy1 - 1), fill=sign)
        text = scene.word.upper()
        # largest font that fits the sign with a small margin
        px = size // 2
        while px > 6:
            font = _font(px)
            l, t, r, b = draw.textbbox((0, 0), text, font=font)
            if r - l <= (sx1 - sx0) - 4 and b - t <= (sy1 - sy0) - 6:
                break
            px -= 1
        cx, cy = (sx0 + sx1) / 2, (sy0 + sy1) / 2
        draw.text((cx - (l + r) / 2, cy - (t + b) / 2), text, font=font, fill=(10, 10, 10))
    return img


def render_array(scene: Scene):
    """The picture as a float32 numpy array 3 x H x W in [0, 1] (the reward convention)."""
    import numpy as np

    return np.asarray(render(scene), dtype=np.float32).transpose(2, 0, 1) / 255.0
