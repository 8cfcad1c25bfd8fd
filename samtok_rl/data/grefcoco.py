"""gRefCOCO (generalised referring expression segmentation) reader.

Reads ReLA's release layout: `grefs(unc).json` (refs), the COCO `instances.json` they point into and the folder of
COCO train2014 images, and returns one row per sentence (not per ref), as every gRefCOCO loader does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import datasets

from samtok_rl.data._common import DataError, ImageSizes, Skipped, segmentation_to_rle
from samtok_rl.masks import rle_area, rle_box_centre


RLE = {"size": datasets.List(datasets.Value("int64")), "counts": datasets.Value("string")}

GREFCOCO_FEATURES = datasets.Features(
    {
        "image": datasets.Value("string"),
        "expression": datasets.Value("string"),
        "split": datasets.Value("string"),
        "no_target": datasets.Value("bool"),
        "gt_masks": datasets.List(RLE),
        "ref_id": datasets.Value("int64"),
        "sent_id": datasets.Value("int64"),
        "image_id": datasets.Value("int64"),
        "ann_ids": datasets.List(datasets.Value("int64")),
    }
)


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err


def _target_ids(ref: dict, where: str) -> list[int]:
    """`ann_id` as a list ([-1] for no-target); a bare int is normalised to a one-element list."""
    ann_ids = ref.get("ann_id")
    if isinstance(ann_ids, int):
        ann_ids = [ann_ids]
    if not isinstance(ann_ids, list) or not ann_ids or not all(isinstance(a, int) for a in ann_ids):
        raise DataError(f"{where}: field 'ann_id' must be an int or a non-empty list of ints, got {ann_ids!r}")
    if -1 in ann_ids and ann_ids != [-1]:
        raise DataError(f"{where}: field 'ann_id' mixes -1 (no target) with real annotation ids: {ann_ids}")
    if "no_target" in ref and bool(ref["no_target"]) != (ann_ids == [-1]):
        raise DataError(f"{where}: field 'no_target' is {ref['no_target']} but ann_id is {ann_ids}")
    return ann_ids


def read_grefcoco(
    refs_file: str | Path,
    instances_file: str | Path,
    image_dir: str | Path,
    splits: str | Iterable[str] | None = None,
    skip_invalid: bool = False,
) -> datasets.Dataset:
    """Read gRefCOCO into one row per sentence.

    Rules (ReLA `grefer.py` / `grefcoco.py`, SAMTok's `tokenize_gres.py`):
    - `ann_id` may be a bare int (normalised to a list); `[-1]` means no target, and annotation -1 is never looked up;
    - crowd annotations (`iscrowd=1`) are skipped, polygons with fewer than 3 points are dropped;
    - each target instance keeps its own mask, and the instances are ordered by bounding-box centre x, then y.

    Nothing is dropped silently: a missing image, an image whose size differs from `instances.json`, an RLE of another
    size, an empty expression, an unknown annotation id, or a target ref left without any usable mask raise
    [`DataError`] naming the file and the row, or, with `skip_invalid=True`, are skipped and counted in one warning.

    Args:
        refs_file (`str` or `Path`): the refs, `grefs(unc).json`.
        instances_file (`str` or `Path`): the COCO `instances.json` holding `images` and `annotations`.
        image_dir (`str` or `Path`): folder with the images named by `images[].file_name`.
        splits (`str` or iterable of `str`, *optional*): keep only these splits (`train`, `val`, `testA`, `testB`);
            defaults to all.
        skip_invalid (`bool`, *optional*, defaults to `False`): skip malformed rows with a warning instead of raising.

    Returns:
        `datasets.Dataset`: columns `image` (absolute path), `expression`, `split`, `no_target`, `gt_masks` (compressed
        RLE per target instance, `[]` for no-target), `ref_id`, `sent_id`, `image_id`, `ann_ids` (the kept instances,
        in answer order).

    Example:
    >>> from samtok_rl.data import read_grefcoco, sample_paths
    >>> p = sample_paths()
    >>> ds = read_grefcoco(p.grefcoco_refs, p.grefcoco_instances, p.images, splits="train")
    >>> ds.column_names[:5]
    ['image', 'expression', 'split', 'no_target', 'gt_masks']
    """
    refs_file, instances_file = Path(refs_file), Path(instances_file)
    image_dir = Path(image_dir).resolve()
    keep = {splits} if isinstance(splits, str) else (set(splits) if splits is not None else None)

    refs = _load_json(refs_file)
    instances = _load_json(instances_file)
    if not isinstance(refs, list):
        raise DataError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    images = _index(instances, "images", ("id", "file_name", "height", "width"), instances_file)
    annotations = _index(instances, "annotations", ("id", "image_id", "segmentation"), instances_file)

    sizes = ImageSizes()
    instance_rles: dict[int, dict | None] = {}  # ann id -> RLE (None: crowd or no usable polygon)
    skipped = Skipped(refs_file, skip_invalid)
    rows = []
    for index, ref in enumerate(refs):
        if keep is not None and ref.get("split") not in keep:
            continue
        where = f"{refs_file}: ref #{index} (ref_id={ref.get('ref_id')})"
        sentences = ref.get("sentences") or []
        try:
            if not sentences:
                raise DataError(f"{where}: field 'sentences' is empty")
            ann_ids = _target_ids(ref, where)
            image_info = images.get(ref.get("image_id"))
            if image_info is None:
                raise DataError(f"{where}: image_id {ref.get('image_id')} is not in {instances_file}")
            path = image_dir / image_info["file_name"]
            height, width = sizes(path, where)
            if (height, width) != (image_info["height"], image_info["width"]):
                raise DataError(
                    f"{where}: image {path} is {height}x{width} (HxW) but {instances_file} says "
                    f"{image_info['height']}x{image_info['width']}"
                )
            targets = (
                []
                if ann_ids == [-1]
                else _instances(ann_ids, annotations, instance_rles, image_info, where, instances_file)
            )
        except DataError as err:
            skipped.record(err, rows=max(len(sentences), 1))
            continue

        for s_index, sentence in enumerate(sentences):
            expression = (sentence.get("sent") or "").strip()
            if not expression:
                skipped.record(
                    DataError(
                        f"{where}, sentence #{s_index} (sent_id={sentence.get('sent_id')}): field 'sent' is empty"
                    )
                )
                continue
            rows.append(
                {
                    "image": str(path),
                    "expression": expression,
                    "split": ref.get("split", ""),
                    "no_target": not targets,
                    "gt_masks": [rle for _, rle in targets],
                    "ref_id": ref.get("ref_id", index),
                    "sent_id": sentence.get("sent_id", -1),
                    "image_id": ref["image_id"],
                    "ann_ids": [ann_id for ann_id, _ in targets],
                }
            )
    skipped.warn()
    if not rows:
        present = sorted({str(ref.get("split")) for ref in refs if isinstance(ref, dict)})
        raise DataError(
            f"{refs_file}: no usable row for split(s) {sorted(keep) if keep else 'all'} (the file has splits {present}; "
            f"{len(skipped.messages)} rows skipped as invalid)"
        )
    return datasets.Dataset.from_list(rows, features=GREFCOCO_FEATURES)


def _index(instances, key: str, fields: tuple[str, ...], path: Path) -> dict:
    """COCO `instances[key]` by id, each entry checked to be an object with `fields`."""
    if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
        raise DataError(f"{path}: expected a COCO instances object with a list under {key!r}")
    for k, entry in enumerate(instances[key]):
        if not isinstance(entry, dict) or any(f not in entry for f in fields):
            raise DataError(f"{path}: {key}[{k}]: expected an object with {list(fields)}, got {entry!r:.80}")
    return {entry["id"]: entry for entry in instances[key]}


def _instances(ann_ids, annotations, cache, image_info, where, instances_file) -> list[tuple[int, dict]]:
    """The ref's usable target instances as `(ann_id, rle)`, in SAMTok's answer order (box centre x, then y)."""
    height, width = image_info["height"], image_info["width"]
    targets = []
    for ann_id in ann_ids:
        if ann_id not in cache:
            ann = annotations.get(ann_id)
            if ann is None:
                raise DataError(f"{where}: annotation id {ann_id} is not in instances.json")
            if ann.get("image_id") != image_info["id"]:
                raise DataError(f"{where}: annotation {ann_id} belongs to image {ann.get('image_id')}")
            if ann.get("iscrowd", 0):
                cache[ann_id] = None  # crowd regions are skipped, as ReLA does
            else:
                rle = segmentation_to_rle(
                    ann["segmentation"], height, width, f"{where}, annotation {ann_id} of {instances_file}"
                )
                # A polygon-free or zero-area instance cannot be encoded (SAMTok needs a box); treat as absent.
                cache[ann_id] = rle if rle is not None and rle_area(rle) > 0 else None
        if cache[ann_id] is not None:
            targets.append((ann_id, cache[ann_id]))
    if not targets:
        raise DataError(
            f"{where}: none of the target annotations {ann_ids} has a usable mask (crowd, < 3-point polygons or empty)"
        )
    # Python's sort is stable, so exact ties keep the ref's order.
    return sorted(targets, key=lambda t: rle_box_centre(t[1]))
