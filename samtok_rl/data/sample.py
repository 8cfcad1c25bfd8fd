"""Paths of the small real-photo sample shipped as package data (`samtok_rl/assets/sample/`).

The sample is built by `scripts/build_sample.py` from photographs bundled in the scikit-image 0.26.0 and imgaug 0.4.0
wheels; see `samtok_rl/assets/sample/README.md`. It uses the original on-disk formats, so the readers run on it
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path


@dataclass(frozen=True)
class SamplePaths:
    """The bundled sample's files, in gRefCOCO and GranD-f layouts."""

    root: Path
    images: Path  # one image folder shared by both layouts
    grefcoco_refs: Path  # grefs(unc).json
    grefcoco_instances: Path  # instances.json
    grandf_train: Path  # GranDf_HA_GCG_train.json
    grandf_val_caption: Path  # val_gcg_coco_caption_gt.json
    grandf_val_mask: Path  # val_gcg_coco_mask_gt.json


def sample_paths() -> SamplePaths:
    """Return the paths of the bundled sample dataset.

    Returns:
        [`SamplePaths`]: absolute paths of the image folder and of each annotation file.

    Example:
    >>> from samtok_rl.data import sample_paths
    >>> sample_paths().grefcoco_refs.name
    'grefs(unc).json'
    """
    # A regular (or editable) install keeps package data as files, so the Traversable is a real Path.
    root = Path(str(files("samtok_rl") / "assets" / "sample"))
    return SamplePaths(
        root=root,
        images=root / "images",
        grefcoco_refs=root / "grefcoco" / "grefs(unc).json",
        grefcoco_instances=root / "grefcoco" / "instances.json",
        grandf_train=root / "grandf" / "annotations" / "train" / "GranDf_HA_GCG_train.json",
        grandf_val_caption=root / "grandf" / "annotations" / "val_test" / "val_gcg_coco_caption_gt.json",
        grandf_val_mask=root / "grandf" / "annotations" / "val_test" / "val_gcg_coco_mask_gt.json",
    )
