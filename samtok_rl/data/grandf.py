"""GranD-f (grounded conversation generation) readers.

Two schemas are read:
- the human-annotated train file `GranDf_HA_GCG_train.json` (a list of records with `caption` and `groundings`),
- the val/test ground-truth pair `{val,test}_gcg_coco_caption_gt.json` + `{val,test}_gcg_coco_mask_gt.json`
  (COCO-caption and COCO-instances style), which the GCG evaluation scores against.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from samtok_rl.data._common import DataError, ImageSizes, Skipped, check_rle
from samtok_rl.data.grefcoco import RLE, _load_json
from samtok_rl.masks import merge_rles, rle_area


logger = logging.getLogger(__name__)

GCG_FEATURES = datasets.Features(
    {
        "image": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "phrases": datasets.List(datasets.Value("string")),
        "spans": datasets.List(datasets.List(datasets.Value("int64"))),
        "gt_masks": datasets.List(RLE),
    }
)

GCG_GT_FEATURES = datasets.Features(
    {
        "image": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "phrases": datasets.List(datasets.Value("string")),
        "gt_masks": datasets.List(RLE),
    }
)


def read_grandf_gcg(
    annotation_file: str | Path, image_dir: str | Path, skip_invalid: bool = False
) -> datasets.Dataset:
    """Read the GranD-f GCG train file (`GranDf_HA_GCG_train.json` schema), one row per record.

    Follows GLaMM's `GranDf_gcg_ds.py`: the caption is stripped of surrounding `"` and whitespace and the character
    spans (`token_positives`, `[start, end)`) index that stripped caption; a phrase's RLEs are merged into one mask;
    phrases are sorted by start offset. Each phrase is the caption text under its span (the text the answer wraps).

    A missing image, an RLE whose size differs from the image file, an empty caption, a record without groundings, a
    span outside the caption or overlapping another, or an empty phrase mask raise [`DataError`] naming the file and
    the row, or, with `skip_invalid=True`, are skipped and counted in one warning.

    Args:
        annotation_file (`str` or `Path`): the JSON list of records.
        image_dir (`str` or `Path`): folder holding `file_name` of each record.
        skip_invalid (`bool`, *optional*, defaults to `False`): skip malformed rows with a warning instead of raising.

    Returns:
        `datasets.Dataset`: columns `image` (absolute path), `image_id`, `caption`, `phrases` (caption order), `spans`
        (`[start, end]` per phrase), `gt_masks` (one compressed RLE per phrase).

    Example:
    >>> from samtok_rl.data import read_grandf_gcg, sample_paths
    >>> p = sample_paths()
    >>> ds = read_grandf_gcg(p.grandf_train, p.images)
    >>> row = ds[0]
    >>> [row["caption"][s:e] for s, e in row["spans"]] == row["phrases"]
    True
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir).resolve()
    records = _load_json(annotation_file)
    if not isinstance(records, list):
        raise DataError(f"{annotation_file}: expected a list of records, got {type(records).__name__}")

    sizes = ImageSizes()
    skipped = Skipped(annotation_file, skip_invalid)
    rows = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            skipped.record(DataError(f"{annotation_file}: record #{index} is not an object: {record!r:.60}"))
            continue
        where = f"{annotation_file}: record #{index} (file_name={record.get('file_name')!r})"
        try:
            rows.append(_gcg_row(record, image_dir, sizes, where))
        except DataError as err:
            skipped.record(err)
    skipped.warn()
    if not rows:
        raise DataError(f"{annotation_file}: no usable record ({len(skipped.messages)} skipped as invalid)")
    return datasets.Dataset.from_list(rows, features=GCG_FEATURES)


def _gcg_row(record: dict, image_dir: Path, sizes: ImageSizes, where: str) -> dict:
    path = image_dir / str(record.get("file_name"))
    height, width = sizes(path, where)  # GLaMM reads the size from the image, not the record
    caption = (record.get("caption") or "").strip('"').strip()
    if not caption:
        raise DataError(f"{where}: field 'caption' is empty")
    groundings = record.get("groundings") or {}
    if not groundings:
        raise DataError(f"{where}: field 'groundings' is empty")

    items = []
    for key, grounding in groundings.items():
        at = f"{where}, grounding {key!r}"
        span = grounding.get("token_positives")
        if not (isinstance(span, list) and len(span) == 2 and 0 <= span[0] < span[1] <= len(caption)):
            raise DataError(f"{at}: field 'token_positives' {span!r} is not a [start, end) span inside the caption")
        rles = grounding.get("rle_masks") or []
        if not rles:
            raise DataError(f"{at}: field 'rle_masks' is empty")
        rle = merge_rles([check_rle(r, height, width, f"{at}, rle_masks[{i}]") for i, r in enumerate(rles)])
        if rle_area(rle) == 0:
            raise DataError(f"{at}: the phrase mask is empty")
        items.append((span[0], span[1], rle))
    items.sort(key=lambda t: t[0])
    for (_, prev_end, _), (start, _, _) in zip(items, items[1:]):
        if start < prev_end:
            raise DataError(f"{where}: phrase spans overlap at character {start}")
    phrases = [caption[start:end].strip() for start, end, _ in items]
    return {
        "image": str(path),
        "image_id": str(record.get("image_id", path.stem)),
        "caption": caption,
        "phrases": phrases,
        "spans": [[start, end] for start, end, _ in items],
        "gt_masks": [rle for _, _, rle in items],
    }


def read_grandf_gcg_gt(
    caption_file: str | Path, mask_file: str | Path, image_dir: str | Path, skip_invalid: bool = False
) -> datasets.Dataset:
    """Read a GranD-f val/test ground-truth pair (`*_gcg_coco_caption_gt.json` + `*_gcg_coco_mask_gt.json`).

    `images[].id` is the file stem (the image is `f"{id}.jpg"`); the caption file has one annotation per image with
    `caption` and `labels`; the mask file has one annotation per label, in label order.

    Args:
        caption_file (`str` or `Path`): the COCO-caption style file.
        mask_file (`str` or `Path`): the COCO-instances style file with one RLE per grounded phrase.
        image_dir (`str` or `Path`): folder holding the `{id}.jpg` images.
        skip_invalid (`bool`, *optional*, defaults to `False`): skip malformed rows with a warning instead of raising.

    Returns:
        `datasets.Dataset`: columns `image`, `image_id`, `caption`, `phrases` (the labels), `gt_masks` (one compressed
        RLE per label), in the caption file's image order.
    """
    caption_file, mask_file = Path(caption_file), Path(mask_file)
    image_dir = Path(image_dir).resolve()
    captions = _load_json(caption_file)
    masks = _load_json(mask_file)
    by_image: dict[str, list[dict]] = {}
    for ann in masks["annotations"]:
        by_image.setdefault(str(ann["image_id"]), []).append(ann)
    if any(ann.get("id") == 0 for ann in masks["annotations"]):
        # pycocotools records a match by the GT's id, so a GT with id 0 never counts as matched in the GLaMM
        # evaluator, which keeps the file's ids; `gcg_metrics` numbers the GT masks from 1 and counts it.
        logger.warning(
            "%s holds a mask annotation with id 0: the reference GLaMM evaluator never counts a match to it, "
            "samtok-rl's AP50 does (GT ids are renumbered from 1), so the two AP50s differ",
            mask_file,
        )
    caption_of: dict[str, dict] = {}
    for ann in captions["annotations"]:
        caption_of.setdefault(str(ann["image_id"]), ann)

    sizes = ImageSizes()
    skipped = Skipped(caption_file, skip_invalid)
    rows = []
    for index, image in enumerate(captions["images"]):
        image_id = str(image["id"])
        where = f"{caption_file}: image #{index} (id={image_id!r})"
        try:
            path = image_dir / f"{image_id}.jpg"
            height, width = sizes(path, where)
            ann = caption_of.get(image_id)
            if ann is None or not (ann.get("caption") or "").strip():
                raise DataError(f"{where}: no caption annotation (field 'caption' missing or empty)")
            labels = list(ann.get("labels") or [])
            phrase_masks = by_image.get(image_id, [])
            if len(phrase_masks) != len(labels):
                raise DataError(f"{where}: {len(labels)} labels but {len(phrase_masks)} masks in {mask_file}")
            rles = [
                check_rle(m["segmentation"], height, width, f"{mask_file}: annotation id={m.get('id')}")
                for m in phrase_masks
            ]
        except DataError as err:
            skipped.record(err)
            continue
        rows.append(
            {
                "image": str(path),
                "image_id": image_id,
                "caption": ann["caption"].strip(),
                "phrases": labels,
                "gt_masks": rles,
            }
        )
    skipped.warn()
    return datasets.Dataset.from_list(rows, features=GCG_GT_FEATURES)
