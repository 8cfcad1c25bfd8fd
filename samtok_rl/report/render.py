"""Pieces shared by the training and the evaluation reports: masked pictures, texts with their mask spans marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samtok_rl.files import open_rgb
from samtok_rl.parsing import mask_spans

from .overlay import colour_hex, draw_masks, save_jpeg
from .page import esc


__all__ = ["Pictures", "code_colours", "load_image", "marked_text"]

THUMBNAIL = 460  # longest side of a picture in the report, in pixels (shown at 230 px: sharp on a HiDPI screen)


def load_image(path: str | None, size: Sequence[int]) -> tuple[np.ndarray, bool]:
    """The image at `path` as `(H, W, 3)` uint8, or a grey canvas of `size` when it is absent (in-memory datasets).

    Returns the pixels and whether they are the real image.
    """
    if path and Path(path).is_file():
        return np.asarray(open_rgb(path)), True
    return np.full((*size, 3), 200, dtype=np.uint8), False


def code_colours(codes: Sequence[Sequence[int]]) -> dict[tuple[int, int], int]:
    """A palette index per distinct code pair, in order of first appearance (a repeated span keeps its colour)."""
    colours: dict[tuple[int, int], int] = {}
    for pair in codes:
        colours.setdefault(tuple(pair), len(colours))
    return colours


def marked_text(text: str, colours: dict[tuple[int, int], int]) -> str:
    """`text`, escaped, with each mask span wrapped in its mask's colour (grey: a span whose mask is not shown,
    e.g. one in the think part)."""
    out, last = [], 0
    for start, end, codes in mask_spans(text):
        out.append(esc(text[last:start]))
        colour = colours.get(tuple(codes))
        style = f' style="background:{colour_hex(colour)}"' if colour is not None else ""
        cls = "span" if colour is not None else "span other"
        out.append(f'<span class="{cls}"{style}>{esc(text[start:end])}</span>')
        last = end
    out.append(esc(text[last:]))
    return "".join(out)


class Pictures:
    """Writes the report's JPEGs into `<report>/img/` and hands back their relative paths."""

    def __init__(self, report_dir: Path):
        self.folder = report_dir / "img"
        self.count = 0

    def save(self, image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[int] | None = None) -> str:
        self.count += 1
        name = f"{self.count:06d}.jpg"
        save_jpeg(draw_masks(image, masks, colours), self.folder / name, THUMBNAIL)
        return f"img/{name}"
