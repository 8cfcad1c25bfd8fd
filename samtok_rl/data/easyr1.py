"""The authors' RL data files (EasyR1 parquet: `images`, `problem`, `answer`, `masks`, `source`) as prepared rows.

SAMTok's RL runs train EasyR1 (`verl.trainer.main`) on parquet files from the Hub dataset
`zhouyik/SAMTok_Training_Data` (`gres8k_train.parquet`, `mix_gres8k_ver4k_train.parquet`,
`mix_grandfgcg_syngcg_train.parquet`). CycleGRPO's builders (`projects/rl/datasets/prepare_gres_rl_dataset.py`)
write them with `datasets`: `images` a list of one `Image` (a struct of `bytes` and `path`), `problem` the question
(a string, or a one-element list in the mixes), `answer` the reference answer with the canonical mask spans (or
`No target.`), `masks` one COCO compressed RLE per span in span order (null for no-target rows) and `source` the
reward router's key (`gres`, `ver`, `thinking_gres`, GCG kinds).

EasyR1 renders `data.format_prompt` over the problem at load time (`{{ content | trim }}` plus, for the default
`r1v.jinja`, the think/answer instruction; `non_thinking.jinja` adds nothing) and places the image where the text
says `<image>`. [`read_easyr1`] does the same and checks every row before anything is written: a malformed row is
named by file, row and field.
"""

from __future__ import annotations

import hashlib
import io
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from samtok_rl.data._common import DataError, Skipped, check_rle
from samtok_rl.files import check_image_mode
from samtok_rl.masks import rle_area
from samtok_rl.parsing import NO_TARGET, parse_gcg, parse_masks
from samtok_rl.prompts import R1_SUFFIX
from samtok_rl.tokens import MASK_START


COLUMNS = ("images", "problem", "answer", "masks", "source")
IMAGE_MARKER = "<image>"  # where EasyR1 puts the image in the prompt (RLHFDataset._build_messages)
# The GRES question the builders write (SAMTok's GRES template); the expression is kept for the reports.
_GRES_QUESTION = re.compile(r"^Please segment (.*) in this image\.$", re.DOTALL)


def source_task(source: str) -> str | None:
    """The samtok-rl task of an EasyR1 `source` value: referring rows (`gres`, `ver`) are GRES, GCG kinds are GCG.

    Example:
    >>> source_task("gres"), source_task("thinking_ver"), source_task("grandf_gcg"), source_task("vqa")
    ('gres', 'gres', 'gcg', None)
    """
    name = source.removeprefix("thinking_")
    if name in ("gres", "ver"):
        return "gres"
    if "gcg" in name:
        return "gcg"
    return None


def format_prompt(problem: str, think: bool) -> list[dict]:
    """The conversational prompt EasyR1 builds from a problem: the format prompt rendered over the trimmed text (the
    think/answer instruction appended after one space for `r1v.jinja`, nothing for `non_thinking.jinja`), then an
    image block where the text says `<image>` (before the text when it does not say it).

    Example:
    >>> format_prompt("<image>Please segment the cat in this image.", think=False)
    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Please segment the cat in this image.'}]}]
    """
    text = problem.strip()
    if think:
        text = f"{text} {R1_SUFFIX}"
    if IMAGE_MARKER not in text:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    content: list[dict] = []
    for i, piece in enumerate(text.split(IMAGE_MARKER)):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


class MissingImage(DataError):
    """A row's image file is not where its path (or `image_root`) says: the summary counts these apart."""


@dataclass
class ImageRef:
    """Where one row's image comes from: embedded bytes (written out once, named by content) or a local file."""

    path: Path | None = None  # a local file (resolved against image_root)
    digest: str | None = None  # sha256 of embedded bytes
    suffix: str = ""  # file suffix of embedded bytes (".jpg", ".png")

    def file_name(self) -> str:
        return f"{self.digest[:24]}{self.suffix}"


@dataclass
class EasyR1Rows:
    """The checked rows of one file, in file order, with what the conversion summary reports."""

    path: Path
    rows: list[dict]  # prepared columns, `image` an `ImageRef` until written
    row_index: list[int]  # each kept row's index in the file
    summary: dict = field(default_factory=dict)


def _problem_text(value, where: str) -> str:
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise DataError(f"{where}, field problem: expected a string or a one-string list, got {value!r:.80}")
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}, field problem: expected the question text, got {value!r:.80}")
    if value.count(IMAGE_MARKER) > 1:
        raise DataError(f"{where}, field problem: {value.count(IMAGE_MARKER)} {IMAGE_MARKER} markers for one image")
    return value


def _image_ref(images, where: str, image_root: Path | None) -> tuple[ImageRef, tuple[int, int]]:
    """The row's image and its (height, width), from the header only; a missing file raises `DataError`."""
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], dict):
        n = len(images) if isinstance(images, list) else type(images).__name__
        raise DataError(f"{where}, field images: expected a list of one image (bytes and/or path), got {n}")
    data, path = images[0].get("bytes"), images[0].get("path")
    if data:
        try:
            with Image.open(io.BytesIO(data)) as img:
                check_image_mode(img, f"{where}, field images[0].bytes")
                width, height = img.size
                suffix = "." + ("jpg" if img.format == "JPEG" else (img.format or "img").lower())
        except OSError as err:
            raise DataError(f"{where}, field images[0].bytes: the image does not decode ({err})") from err
        return ImageRef(digest=hashlib.sha256(data).hexdigest(), suffix=suffix), (height, width)
    if not path:
        raise DataError(f"{where}, field images[0]: neither bytes nor a path")
    # The released files carry the authors' absolute paths: the file name is looked up in image_root.
    local = image_root / Path(path).name if image_root is not None else Path(path)
    if not local.is_file():
        hint = "" if image_root is not None else "; set image_root to the folder of the images (COCO train2014)"
        raise MissingImage(f"{where}, field images[0].path: {path!r} not found as {local}{hint}")
    try:
        with Image.open(local) as img:
            check_image_mode(img, local)
            width, height = img.size
    except OSError as err:
        raise DataError(f"{where}, field images[0].path: cannot read {local} ({err})") from err
    return ImageRef(path=local.resolve()), (height, width)


def _row(raw: dict, where: str, image_root: Path | None, think: bool | None, task: str | None) -> dict:
    source = raw.get("source")
    if not isinstance(source, str):
        raise DataError(f"{where}, field source: expected a string, got {source!r:.60}")
    row_task = task or source_task(source)
    if row_task is None:
        raise DataError(
            f"{where}, field source: {source!r} is neither a GRES (gres, ver) nor a GCG source; set task to "
            "gres or gcg to train on it"
        )
    problem = _problem_text(raw.get("problem"), where)
    answer = raw.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}, field answer: expected the reference answer text, got {answer!r:.80}")
    codes = parse_masks(answer, repair=False)
    if answer.count(MASK_START) != len(codes):
        raise DataError(
            f"{where}, field answer: {answer.count(MASK_START)} mask spans, {len(codes)} of them well formed "
            f"(<|mt_start|><|mt_XXXX|><|mt_YYYY|><|mt_end|>): {answer!r:.120}"
        )
    no_target = answer.strip() == NO_TARGET
    if not no_target and not codes:
        raise DataError(f"{where}, field answer: neither mask spans nor {NO_TARGET!r}: {answer!r:.120}")
    masks = raw.get("masks") or []
    if not isinstance(masks, list) or len(masks) != len(codes):
        n = len(masks) if isinstance(masks, list) else type(masks).__name__
        raise DataError(f"{where}, field masks: {n} masks for the {len(codes)} mask spans of the answer")
    image, (height, width) = _image_ref(raw.get("images"), where, image_root)
    gt_masks = [check_rle(m, height, width, f"{where}, field masks[{k}]") for k, m in enumerate(masks)]
    expression, phrases = "", []
    if row_task == "gres":
        match = _GRES_QUESTION.match(problem.replace(IMAGE_MARKER, "").strip())
        expression = match.group(1) if match else problem.replace(IMAGE_MARKER, "").strip()
    else:
        _, phrases, paired = parse_gcg(answer)
        if len(phrases) != len(codes) or any(c is None for c in paired):
            raise DataError(
                f"{where}, field answer: a GCG answer needs one <|object_ref_start|> phrase <|object_ref_end|> "
                f"before each mask span; {len(phrases)} phrases for {len(codes)} spans: {answer!r:.120}"
            )
    return {
        "image": image,
        "prompt": format_prompt(problem, row_task == "gres" if think is None else think),
        "solution": answer,
        "gt_masks": gt_masks,
        "gt_codes": [[int(c0), int(c1)] for c0, c1 in codes],
        "task": row_task,
        "no_target": no_target,
        "expression": expression,
        "phrases": phrases,
        "_source": source,
    }


def read_easyr1(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    think: bool | None = None,
    task: str | None = None,
    skip_invalid: bool = False,
) -> EasyR1Rows:
    """Read and check every row of an EasyR1 RL parquet file; nothing is written.

    Args:
        path: the parquet file.
        image_root: the folder where rows without image bytes find their image, by the file name of their path.
        think: render the think/answer format prompt (`r1v.jinja`); default: for GRES rows (the GRES script's
            default format prompt) and not for GCG rows (the GCG script's `non_thinking.jinja`).
        task: `gres` or `gcg` for every row; default: from each row's `source`.
        skip_invalid: leave out a malformed row or one whose image is missing, counting it in the summary, instead
            of raising.

    Raises:
        `DataError`: a malformed row or a missing image (without `skip_invalid`), naming the file, row and field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such parquet file")
    root = Path(image_root).resolve() if image_root is not None else None  # prepared rows store absolute paths
    if root is not None and not root.is_dir():
        raise DataError(f"image_root {root} is not a folder")
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: column(s) {missing} missing; an EasyR1 RL parquet has {list(COLUMNS)} (found {names})"
        )
    table = pq.read_table(path, columns=list(COLUMNS))
    skipped = Skipped(path, skip_invalid)
    missing_images = 0
    out = EasyR1Rows(path, [], [])
    for start in range(0, len(table), 256):  # Python objects a batch at a time: the mixes embed about 2 GB of images
        for k, raw in enumerate(table.slice(start, 256).to_pylist()):
            index = start + k
            try:
                out.rows.append(_row(raw, f"{path}, row {index}", root, think, task))
                out.row_index.append(index)
            except DataError as err:
                skipped.record(err)
                missing_images += isinstance(err, MissingImage)
    skipped.warn()
    out.summary = summarize(out.rows, len(table), len(skipped.messages), missing_images)
    return out


def summarize(rows: list[dict], total: int, skipped: int, missing_images: int) -> dict:
    """What a conversion kept: rows per source, no-target share, masks per row, mask areas, images."""
    by_source: dict[str, dict] = {}
    for row in rows:
        entry = by_source.setdefault(row["_source"], {"rows": 0, "no_target": 0, "masks": 0, "several": 0})
        entry["rows"] += 1
        entry["no_target"] += row["no_target"]
        entry["masks"] += len(row["gt_codes"])
        entry["several"] += len(row["gt_codes"]) > 1
    areas = [
        100.0 * rle_area(m) / (m["size"][0] * m["size"][1]) for row in rows for m in row["gt_masks"] if m["size"][0]
    ]
    refs = [row["image"] for row in rows]
    embedded = {r.digest for r in refs if r.digest}
    local = {r.path for r in refs if r.path}
    with_target = [len(row["gt_codes"]) for row in rows if row["gt_codes"]]
    return {
        "rows": total,
        "kept": len(rows),
        "skipped": skipped,
        "by_source": by_source,
        "tasks": dict(Counter(row["task"] for row in rows)),
        "no_target": sum(row["no_target"] for row in rows),
        "no_target_share": round(sum(row["no_target"] for row in rows) / max(1, len(rows)), 4),
        "masks": sum(with_target),
        "rows_with_several_masks": sum(n > 1 for n in with_target),
        "masks_per_row_with_target": round(sum(with_target) / max(1, len(with_target)), 3),
        "median_mask_area_pct": round(statistics.median(areas), 2) if areas else None,
        "images": {
            "distinct": len(embedded) + len(local),
            "embedded": len(embedded),
            "from_image_root": len(local),
            "missing_rows": missing_images,
        },
    }


def format_summary(summary: dict) -> str:
    """The conversion summary as a small text table (what `samtok-rl prepare` prints)."""
    lines = [f"{'source':<16}{'rows':>8}{'no target':>11}{'share':>8}{'masks':>8}{'several':>9}"]
    for source, e in sorted(summary["by_source"].items()):
        share = e["no_target"] / max(1, e["rows"])
        lines.append(f"{source:<16}{e['rows']:>8}{e['no_target']:>11}{share:>8.1%}{e['masks']:>8}{e['several']:>9}")
    lines.append(
        f"{'all':<16}{summary['kept']:>8}{summary['no_target']:>11}{summary['no_target_share']:>8.1%}"
        f"{summary['masks']:>8}{summary['rows_with_several_masks']:>9}"
    )
    images = summary["images"]
    lines.append(
        f"rows read {summary['rows']}, kept {summary['kept']}, skipped {summary['skipped']}; "
        f"masks per row with a target {summary['masks_per_row_with_target']}, "
        f"median mask area {summary['median_mask_area_pct']}% of the image"
    )
    lines.append(
        f"images: {images['distinct']} distinct ({images['embedded']} embedded, {images['from_image_root']} "
        f"resolved in image_root), {images['missing_rows']} rows with a missing image"
    )
    return "\n".join(lines)
