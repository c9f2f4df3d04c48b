"""Pixel analysis of world pictures: background, foreground, colours, objects, regions.

Works on one image as a float numpy array H x W x 3 in [0, 1]. The rules match how
:mod:`marble_world.world` paints: neutral plain backgrounds, saturated flat objects.

* background = per-channel median of the 1-px border;
* foreground = pixels whose largest channel difference from the background exceeds
  ``fg_threshold`` (0.25: every palette colour is >= 0.5 away from every background);
* a pixel's colour = the nearest (RGB) entry of the palette plus neutral white/grey/black;
* objects = 8-connected foreground components of at least ``min_area`` pixels (6 at 64 px,
  scaled with the image area); the generator keeps objects >= 3 px apart, so they never merge.
"""

from __future__ import annotations

import numpy as np

from marble_world.world import COLORS, NEUTRALS, region_box

CLASS_NAMES = tuple(COLORS) + tuple(NEUTRALS)
_CLASS_RGB = np.array([COLORS[c] for c in COLORS] + [NEUTRALS[c] for c in NEUTRALS], dtype=np.float32) / 255.0


def background_color(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    return np.median(border, axis=0)


def foreground_mask(img: np.ndarray, fg_threshold: float = 0.25) -> np.ndarray:
    bg = background_color(img)
    return np.abs(img - bg).max(axis=-1) > fg_threshold


def color_classes(img: np.ndarray) -> np.ndarray:
    """H x W array of indices into CLASS_NAMES (nearest palette/neutral colour)."""
    d = ((img[..., None, :] - _CLASS_RGB) ** 2).sum(-1)
    return d.argmin(-1)


def color_fraction(img: np.ndarray, color: str, fg_threshold: float = 0.25) -> float:
    """Share of foreground pixels whose nearest colour is ``color`` (0 with no foreground)."""
    fg = foreground_mask(img, fg_threshold)
    if not fg.any():
        return 0.0
    cls = color_classes(img)[fg]
    return float((cls == CLASS_NAMES.index(color)).mean())


def objects(img: np.ndarray, fg_threshold: float = 0.25, min_area: float = 6.0) -> list[dict]:
    """Foreground components >= min_area (at 64 px; scaled by area): area, bbox, centroid, colour."""
    from scipy import ndimage

    h, w = img.shape[:2]
    min_px = min_area * (h * w) / (64 * 64)
    fg = foreground_mask(img, fg_threshold)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    cls = color_classes(img)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        m = labels[sl] == i
        area = int(m.sum())
        if area < min_px:
            continue
        ys, xs = np.nonzero(m)
        counts = np.bincount(cls[sl][m], minlength=len(CLASS_NAMES))
        out.append(
            {
                "area": area,
                "bbox": (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop),
                "centroid": (float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start)),
                "color": CLASS_NAMES[int(counts.argmax())],
            }
        )
    return out


def count_objects(img: np.ndarray, fg_threshold: float = 0.25, min_area: float = 6.0) -> int:
    return len(objects(img, fg_threshold, min_area))


def region_fraction(img: np.ndarray, position: str, fg_threshold: float = 0.25) -> float:
    """Share of foreground pixels inside the region ``position`` names (0 with no foreground)."""
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"world pictures are square, got {h} x {w}")
    fg = foreground_mask(img, fg_threshold)
    total = fg.sum()
    if total == 0:
        return 0.0
    x0, y0, x1, y1 = region_box(position, h)
    return float(fg[y0:y1, x0:x1].sum() / total)


def luminance_contrast(img: np.ndarray) -> float:
    """RMS contrast: 2 x std of luminance (Rec. 709), clipped to [0, 1]."""
    lum = img @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return float(min(1.0, 2.0 * lum.std()))
