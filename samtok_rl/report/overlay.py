"""Masks drawn over their image: translucent fill and a solid outline per mask, one colour each (PIL and numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


__all__ = ["PALETTE", "colour_hex", "draw_masks", "save_jpeg"]

# Matplotlib's tab10 colours: distinct on photographs and for the common forms of colour blindness.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def colour_hex(index: int) -> str:
    """The CSS colour of mask `index` (the palette repeats after 10 masks)."""
    r, g, b = PALETTE[index % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border (4-neighbour erosion, repeated)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def draw_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[int] | None = None, alpha: float = 0.45
) -> np.ndarray:
    """`image` (`(H, W, 3)` uint8) with each `(H, W)` bool mask filled at `alpha` and outlined in its colour.

    `colours[k]` is mask k's palette index (default: k), so the same mask keeps its colour across pictures.

    Example:
    >>> img = np.zeros((4, 4, 3), np.uint8); m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> out = draw_masks(img, [m]); out[0, 0].tolist(), out[1, 1].tolist()
    ([0, 0, 0], [31, 119, 180])
    """
    out = image.astype(np.float32)
    width = max(1, round(max(image.shape[:2]) / 250))  # about 2 px on a 500 px picture
    for k, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {k} has shape {mask.shape}, the image {image.shape[:2]}")
        colour = np.array(PALETTE[(k if colours is None else colours[k]) % len(PALETTE)], dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[_outline(mask, width)] = colour
    return out.round().astype(np.uint8)


def save_jpeg(pixels: np.ndarray, path: Path, max_side: int) -> Path:
    """Save `pixels` as a JPEG whose longer side is at most `max_side` (the report's thumbnails)."""
    picture = Image.fromarray(pixels)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, "JPEG", quality=85)
    return path
