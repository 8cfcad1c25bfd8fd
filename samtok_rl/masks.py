"""Binary masks as compressed COCO RLE (pycocotools): the JSON form datasets, predictions and rewards store.

The JSON form keeps `counts` as `str` (`{"size": [H, W], "counts": str}`); pycocotools wants bytes, which
`coco_rle` gives. Everything that turns masks into RLE or back goes through here.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


__all__ = ["coco_rle", "decode_rle", "decode_rles", "merge_rles", "rle_area", "rle_box_centre", "rle_from_mask"]


def rle_from_mask(mask: np.ndarray) -> dict:
    """Encode one binary mask as a JSON-ready compressed COCO RLE.

    Args:
        mask (`np.ndarray`): `(H, W)` boolean or 0/1 array.

    Returns:
        `dict`: `{"size": [H, W], "counts": str}`.

    Example:
    >>> rle_from_mask(np.eye(2, dtype=bool))
    {'size': [2, 2], 'counts': '0120'}
    """
    # pycocotools wants Fortran-ordered uint8: RLE runs go down the columns.
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def coco_rle(rle: dict) -> dict:
    """The pycocotools view of a JSON compressed RLE (counts as bytes)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode one compressed COCO RLE (JSON form, `counts` as `str`) to an `(H, W)` bool array."""
    return mask_utils.decode(coco_rle(rle)).astype(bool)


def merge_rles(rles: list[dict]) -> dict:
    """Union of compressed RLEs of one size, returned in JSON form."""
    merged = mask_utils.merge([coco_rle(r) for r in rles], intersect=0)
    return {"size": [int(s) for s in merged["size"]], "counts": merged["counts"].decode("utf-8")}


def rle_area(rle: dict) -> int:
    return int(mask_utils.area(coco_rle(rle)))


def rle_box_centre(rle: dict) -> tuple[float, float]:
    """Centre `(x, y)` of the mask's bounding box, the key of SAMTok's left-to-right, top-to-bottom target order."""
    x, y, w, h = mask_utils.toBbox(coco_rle(rle)).tolist()
    return x + w / 2, y + h / 2


def decode_rles(rles: list[dict]) -> np.ndarray:
    """JSON COCO RLEs (one image's masks) -> `(K, H, W)` bool; `[]` gives `(0, 0, 0)`.

    Example:
    >>> m = np.zeros((4, 5), dtype=bool); m[1:3, 2:4] = True
    >>> decode_rles([rle_from_mask(m)]).shape, int(decode_rles([rle_from_mask(m)]).sum())
    ((1, 4, 5), 4)
    """
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([decode_rle(r) for r in rles])  # (K, H, W)
