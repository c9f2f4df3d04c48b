"""Image grids with the prompt written under each image (evaluation logs, reports)."""

from __future__ import annotations

import textwrap


def to_pil(images):
    """Float tensor N x 3 x H x W in [0, 1] -> list of PIL images."""
    import numpy as np
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(a.transpose(1, 2, 0)) for a in arr]


def grid(images, captions: list[str], columns: int = 4, cell: int = 160):
    """A PIL grid: each image resized to ``cell`` px with its caption below."""
    from PIL import Image, ImageDraw

    pics = to_pil(images)
    rows = (len(pics) + columns - 1) // columns
    text_h = 40
    canvas = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (pic, cap) in enumerate(zip(pics, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_h)
        canvas.paste(pic.resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(cap, width=cell // 6)[:3]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell + 1 + 12 * j), line, fill="black")
    return canvas
