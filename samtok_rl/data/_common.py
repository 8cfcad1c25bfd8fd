"""Shared pieces of the dataset readers: the error type, RLE helpers and the invalid-row bookkeeping."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image
from pycocotools import mask as mask_utils

from samtok_rl.errors import UsageError
from samtok_rl.files import check_image_mode
from samtok_rl.masks import merge_rles


class DataError(UsageError):
    """A malformed input row. The message names the file, the row and the field at fault."""


def segmentation_to_rle(segmentation, height: int, width: int, where: str) -> dict | None:
    """Rasterise a COCO `segmentation` (polygons, uncompressed or compressed RLE) to one compressed RLE.

    Polygons with fewer than 3 points are dropped, as ReLA's loader does; `None` is returned when nothing is left.

    Args:
        segmentation: the annotation's `segmentation` value.
        height (`int`), width (`int`): the image size the annotation must match.
        where (`str`): file/row description used in error messages.

    Returns:
        `dict | None`: the compressed RLE in JSON form, or `None` for a polygon list with no usable polygon.
    """
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
                raise DataError(f"{where}: segmentation polygon #{k} is not a list of numbers: {polygon!r:.60}")
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        return merge_rles(
            [{"size": list(r["size"]), "counts": r["counts"]} for r in mask_utils.frPyObjects(polygons, height, width)]
        )
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise DataError(f"{where}: segmentation RLE size {size} does not match the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            # Uncompressed RLE (typical for crowd annotations): compress it.
            rle = mask_utils.frPyObjects(segmentation, height, width)
            return {"size": size, "counts": rle["counts"].decode("utf-8")}
        return {"size": size, "counts": segmentation["counts"]}
    raise DataError(f"{where}: unsupported segmentation {type(segmentation).__name__}; expected polygons or RLE")


def check_rle(rle, height: int, width: int, where: str) -> dict:
    """Validate a JSON compressed RLE against the image size and return it in normalised form."""
    if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str) and "size" in rle):
        raise DataError(f"{where}: expected a compressed RLE {{'size': [h, w], 'counts': str}}, got {rle!r:.80}")
    size = [int(s) for s in rle["size"]]
    if size != [height, width]:
        raise DataError(f"{where}: RLE size {size} does not match the image size {[height, width]}")
    return {"size": size, "counts": rle["counts"]}


class ImageSizes:
    """Reads image sizes from file headers once per path, raising `DataError` for a missing or unreadable image, or
    one whose mode samtok-rl refuses (`samtok_rl.files.check_image_mode`: found here, before any pixel is encoded)."""

    def __init__(self):
        self._sizes: dict[Path, tuple[int, int]] = {}

    def __call__(self, path: Path, where: str) -> tuple[int, int]:
        """Return `(height, width)` of the image at `path`."""
        if path not in self._sizes:
            if not path.is_file():
                raise DataError(f"{where}: image file not found: {path}")
            try:
                with Image.open(path) as img:  # reads the header only
                    width, height = img.size
                    check_image_mode(img, path)
            except OSError as err:
                raise DataError(f"{where}: cannot read image {path}: {err}") from err
            except UsageError as err:
                raise DataError(f"{where}: {err}") from err
            self._sizes[path] = (height, width)
        return self._sizes[path]


class Skipped:
    """Collects the rows a reader skipped with `skip_invalid=True` and reports them in one warning."""

    def __init__(self, source: Path | str, skip_invalid: bool):
        self.source = source
        self.skip_invalid = skip_invalid
        self.messages: list[str] = []

    def record(self, err: DataError, rows: int = 1) -> None:
        """Re-raise `err` unless skipping is on; then remember it `rows` times (one per dataset row lost)."""
        if not self.skip_invalid:
            raise err
        self.messages.extend([str(err)] * rows)

    def warn(self) -> None:
        if self.messages:
            unique = list(dict.fromkeys(self.messages))
            shown = "\n  ".join(unique[:5]) + ("\n  ..." if len(unique) > 5 else "")
            warnings.warn(
                f"{self.source}: skipped {len(self.messages)} invalid row(s) (skip_invalid=True):\n  {shown}",
                stacklevel=3,
            )
