"""`samtok-rl prepare`: turn gRefCOCO / GranD-f into an RL dataset with mask-token answers.

Every ground-truth mask is tokenized offline into its two codes with the SAMTok mask tokenizer, and the reference
answer (`solution`) is written with those codes, so training never runs the tokenizer. The output folder holds
parquet shards plus `manifest.json`; a re-run skips finished shards and never rewrites them, so an interrupted run
resumes where it stopped. Load the result with [`load_prepared`].

Example (the bundled sample, GRES, with SAMTok's released tokenizer):

    samtok-rl prepare --task gres --sample --split train --mask_tokenizer zhouyik/Qwen3-VL-8B-SAMTok --output_dir out/gres
    samtok-rl prepare --config recipes/prepare/gres_grefcoco.yaml
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from samtok_rl.cli import config_parser, report_errors
from samtok_rl.data import DataError, read_grandf_gcg, read_grefcoco, sample_paths
from samtok_rl.data.easyr1 import EasyR1Rows, format_summary, read_easyr1
from samtok_rl.data.grefcoco import RLE
from samtok_rl.errors import UsageError
from samtok_rl.files import check_output_dir, open_rgb, sha256_file, write_json_atomic
from samtok_rl.logs import setup_logging
from samtok_rl.mask_tokenizer import build_mask_tokenizer, check_mask_tokenizer_files, check_mask_tokenizer_source
from samtok_rl.masks import decode_rle
from samtok_rl.parsing import NO_TARGET, OBJ_REF_END, OBJ_REF_START
from samtok_rl.prompts import GCG_QUESTION, GRES_TEMPLATE, check_template, conversation, gcg_question, gres_question
from samtok_rl.tokens import format_mask


logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

PREPARED_FEATURES = datasets.Features(
    {
        "image": datasets.Value("string"),
        "prompt": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        ),
        "solution": datasets.Value("string"),
        "gt_masks": datasets.List(RLE),
        "gt_codes": datasets.List(datasets.List(datasets.Value("int64"))),
        "task": datasets.Value("string"),
        "no_target": datasets.Value("bool"),
        "expression": datasets.Value("string"),
        "phrases": datasets.List(datasets.Value("string")),
    }
)


# ---------------------------------------------------------------------------------------------------------------------
# Selection and answer formatting (pure functions).


# Columns every row needs a value in: TRL builds the prompt from `prompt` and `image`; the rewards read `solution` and
# `task` (a missing one would make them return None, and the reward vanish from the logs, without any error).
REQUIRED_VALUES = ("prompt", "image", "solution", "task")


def select_one_per_image(images: Sequence[str], num_images: int, seed: int = 42) -> list[int]:
    """Pick `num_images` images and one row per picked image, as the reference RL set was drawn (SAMTok's RL data: 4,000 gRefCOCO train images, seed 42).

    Rows are grouped by image in first-appearance order; `random.Random(seed).sample` draws the image indices; then a
    fresh `random.Random(seed)` picks one row per chosen image with `choice`, walking the images in first-appearance
    order.

    Args:
        images (`Sequence[str]`): the image of each row, in dataset order.
        num_images (`int`): how many images to keep; all of them when it exceeds the number of images.
        seed (`int`, *optional*, defaults to `42`): the reference seed.

    Returns:
        `list[int]`: the kept row indices, in first-appearance order of their images.

    Example:
    >>> select_one_per_image(["a", "a", "b", "c", "c"], num_images=2)
    [0, 3]
    """
    groups: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image, []).append(index)
    rows_per_image = list(groups.values())
    if num_images >= len(rows_per_image):
        logger.info("num_images=%d >= %d images: keeping every image", num_images, len(rows_per_image))
        num_images = len(rows_per_image)
    chosen = sorted(random.Random(seed).sample(range(len(rows_per_image)), num_images))
    rng = random.Random(seed)
    return [rng.choice(rows_per_image[i]) for i in chosen]


def select_with_no_target_share(
    images: Sequence[str], no_target: Sequence[bool], num_images: int, share: float, seed: int = 42
) -> list[int]:
    """Pick `num_images` images and one row per image so that `round(share * num_images)` rows are no-target ones.

    The authors' released GRES set (`gres8k_train.parquet`) is 56% no-target rows (4,666 of 8,337), where one random
    expression per gRefCOCO image gives about 12%; N-acc depends on that share. Images with a no-target expression
    are drawn for the no-target rows, the others from the rest, each with `random.Random(seed)`.

    Raises:
        `UsageError`: too few images have a no-target (or a target) expression for the asked share.

    Example:
    >>> select_with_no_target_share(["a", "a", "b", "c", "d"], [True, False, False, True, False], 2, share=0.5)
    [0, 2]
    """
    groups: dict[str, tuple[list[int], list[int]]] = {}  # image -> (target rows, no-target rows)
    for index, (image, empty) in enumerate(zip(images, no_target)):
        groups.setdefault(image, ([], []))[bool(empty)].append(index)
    want_empty = round(share * num_images)
    rng = random.Random(seed)
    with_empty = [image for image, (_, empty) in groups.items() if empty]
    if len(with_empty) < want_empty:
        raise UsageError(
            f"no_target_share={share} of {num_images} images needs {want_empty} images with a no-target expression; "
            f"the source has {len(with_empty)} (lower num_images or the share)"
        )
    empty_images = rng.sample(with_empty, want_empty)
    taken = set(empty_images)
    rest = [image for image, (full, _) in groups.items() if full and image not in taken]
    if len(rest) < num_images - want_empty:
        raise UsageError(
            f"no_target_share={share} of {num_images} images needs {num_images - want_empty} other images with a "
            f"target; the source has {len(rest)}"
        )
    full_images = rng.sample(rest, num_images - want_empty)
    rows = [rng.choice(groups[i][1]) for i in empty_images] + [rng.choice(groups[i][0]) for i in full_images]
    return sorted(rows)


def gres_solution(codes: Sequence[Sequence[int]], label: str) -> str:
    """The GRES reference answer: a fenced JSON list of `{"mask_2d": span, "label": label}`, or `No target.`.

    Example:
    >>> print(gres_solution([(1, 2)], "the cat"))
    ```json
    [{"mask_2d": "<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>", "label": "the cat"}]
    ```
    >>> gres_solution([], "the dog")
    'No target.'
    """
    if len(codes) == 0:
        return NO_TARGET
    entries = [{"mask_2d": format_mask(c0, c1), "label": label} for c0, c1 in codes]
    return "```json\n" + json.dumps(entries, ensure_ascii=False) + "\n```"


def gcg_solution(caption: str, spans: Sequence[Sequence[int]], codes: Sequence[Sequence[int]]) -> str:
    """The GCG reference answer: each phrase span wrapped in Qwen's grounding tokens and followed by its mask span.

    GLaMM's `<p> phrase </p> [SEG]` with `<p>`/`</p>` mapped to `<|object_ref_start|>`/`<|object_ref_end|>` and
    `[SEG]` to the mask span, inserted from the end of the caption backwards so earlier offsets stay valid.

    Example:
    >>> gcg_solution("A cat sits.", [[0, 5]], [(1, 2)])
    '<|object_ref_start|> A cat <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|> sits.'
    """
    for (start, end), (c0, c1) in sorted(zip(spans, codes), key=lambda t: t[0][0], reverse=True):
        span = format_mask(c0, c1)
        caption = f"{caption[:start]}{OBJ_REF_START} {caption[start:end]} {OBJ_REF_END} {span}{caption[end:]}"
    return caption


def build_question(task: str, expression: str = "", template: str | None = None, think: bool = True) -> str:
    """The task question: GRES fills `template` (default `Please segment {expression} in this image.`); GCG uses
    `template` as the whole question (default: the reference GCG question). `think` appends the R1 suffix."""
    if task == "gres":
        return gres_question(expression, think=think, template=template or GRES_TEMPLATE)
    return gcg_question(think=think, question=template or GCG_QUESTION)


# ---------------------------------------------------------------------------------------------------------------------
# Sources.


def read_source(
    task: str,
    *,
    refs: str | Path | None = None,
    instances: str | Path | None = None,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    sample: bool = False,
    split: str | None = None,
    skip_invalid: bool = False,
) -> datasets.Dataset:
    """Read the raw rows of one task, from the given files or from the bundled sample (`sample=True`)."""
    if sample:
        paths = sample_paths()
        refs, instances, annotations = paths.grefcoco_refs, paths.grefcoco_instances, paths.grandf_train
        images = images or paths.images
    if task == "gres":
        if refs is None or instances is None or images is None:
            raise UsageError("task gres needs refs, instances and images (or sample)")
        return read_grefcoco(refs, instances, images, splits=split, skip_invalid=skip_invalid)
    if task == "gcg":
        if annotations is None or images is None:
            raise UsageError("task gcg needs annotations and images (or sample)")
        return read_grandf_gcg(annotations, images, skip_invalid=skip_invalid)
    raise UsageError(f"unknown task {task!r}; expected 'gres' or 'gcg'")


# ---------------------------------------------------------------------------------------------------------------------
# Sharded, resumable preparation.


def _fingerprint(source: datasets.Dataset, task: str, settings: dict) -> str:
    """Hash of the selected input rows and the settings, so a resume never mixes shards of different inputs."""
    h = hashlib.sha256(json.dumps({"task": task, "settings": settings}, sort_keys=True).encode())
    for row in source:
        key = [row["image"], row.get("expression", ""), row.get("caption", ""), [m["counts"] for m in row["gt_masks"]]]
        h.update(json.dumps(key).encode())
    return h.hexdigest()


def _shard_name(index: int, count: int) -> str:
    return f"data/train-{index:05d}-of-{count:05d}.parquet"


def _encode_shard(rows: list[dict], tokenizer, batch_size: int, skip_invalid: bool) -> list[np.ndarray | None]:
    """Codes `(K, 2)` per row; one image-encoder pass per distinct image of the shard, masks in chunks.

    Every image is decoded, no-target rows' included (training opens them all): an image that does not decode fails
    here naming the file, or with `skip_invalid` gives `None` for its rows.
    """
    by_image: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_image.setdefault(row["image"], []).append(i)
    codes: list[np.ndarray | None] = [np.zeros((0, 2), np.int64) for _ in rows]
    for path, indices in by_image.items():
        try:
            rgb = np.asarray(open_rgb(path))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated or corrupt files
            # open_rgb's own refusal (a mode I image outside 0..65535) already names the file.
            problem = str(err) if isinstance(err, UsageError) else f"{path}: the image does not decode ({err})"
            if not skip_invalid:
                raise DataError(f"{problem}; fix it, or set skip_invalid") from err
            logger.warning("%s: its %d row(s) are skipped", problem, len(indices))
            for i in indices:
                codes[i] = None
            continue
        # (row, mask) pairs of this image; identical RLEs (same target in two sentences) are encoded once.
        unique: dict[str, int] = {}
        flat = []
        for i in indices:
            for rle in rows[i]["gt_masks"]:
                if rle["counts"] not in unique:
                    unique[rle["counts"]] = len(flat)
                    flat.append(rle)
        if not flat:
            continue
        out = np.concatenate(
            [
                tokenizer.encode(rgb, np.stack([decode_rle(r) for r in flat[k : k + batch_size]]))
                for k in range(0, len(flat), batch_size)
            ]
        )  # (M, 2) int64
        for i in indices:
            codes[i] = out[[unique[rle["counts"]] for rle in rows[i]["gt_masks"]]].reshape(-1, 2)
    return codes


def _prepared_row(row: dict, codes: np.ndarray, task: str, template: str | None, think: bool) -> dict:
    gt_codes = [[int(c0), int(c1)] for c0, c1 in codes]
    if task == "gres":
        question = build_question("gres", row["expression"], template, think)
        solution = gres_solution(gt_codes, row["expression"])
        expression, phrases = row["expression"], []
    else:
        question = build_question("gcg", template=template, think=think)
        solution = gcg_solution(row["caption"], row["spans"], gt_codes)
        expression, phrases = "", list(row["phrases"])
    return {
        "image": row["image"],
        "prompt": conversation(question),
        "solution": solution,
        "gt_masks": row["gt_masks"],
        "gt_codes": gt_codes,
        "task": task,
        "no_target": len(gt_codes) == 0,
        "expression": expression,
        "phrases": phrases,
    }


def prepare(
    source: datasets.Dataset,
    task: str,
    output_dir: str | Path,
    load_mask_tokenizer: Callable[[], object],
    *,
    template: str | None = None,
    think: bool = True,
    shard_size: int = 256,
    batch_size: int = 32,
    tokenizer_id: str = "",
    progress: bool = True,
    skip_invalid: bool = False,
) -> datasets.Dataset:
    """Tokenize every ground-truth mask of `source` and write the RL dataset as resumable parquet shards.

    Shard `k` holds rows `[k * shard_size, (k + 1) * shard_size)`. Each finished shard is written to a temporary file,
    renamed into place and then recorded in `manifest.json`; a re-run with the same inputs and settings skips every
    recorded shard (and does not even load the tokenizer when all are done). A run with different inputs or settings
    in the same folder raises instead of mixing shards.

    Args:
        source (`datasets.Dataset`): rows from [`read_grefcoco`] (task `"gres"`) or [`read_grandf_gcg`] (`"gcg"`),
            already filtered/selected.
        task (`str`): `"gres"` or `"gcg"`.
        output_dir (`str` or `Path`): the output folder (created if needed).
        load_mask_tokenizer (`Callable[[], MaskTokenizer]`): builds the tokenizer; called at most once, and only
            when a shard is left to do.
        template (`str`, *optional*): GRES question template with `{expression}`, or the whole GCG question;
            defaults to the reference prompts.
        think (`bool`, *optional*, defaults to `True`): append the R1 think/answer instruction.
        shard_size (`int`, *optional*, defaults to `256`): rows per shard (the unit of resumption).
        batch_size (`int`, *optional*, defaults to `32`): most masks per tokenizer call (one image per call).
        tokenizer_id (`str`, *optional*): description of the tokenizer, recorded in the manifest.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm progress bar.
        skip_invalid (`bool`, *optional*, defaults to `False`): skip the rows of images that do not decode (with a
            warning) instead of raising.

    Returns:
        `datasets.Dataset`: the prepared rows (see [`load_prepared`]).
    """
    if task not in ("gres", "gcg"):
        raise UsageError(f"unknown task {task!r}; expected 'gres' or 'gcg'")
    if len(source) == 0:
        raise UsageError(
            f"nothing to prepare: the {task} source selected 0 rows (check split, num_images, skip_invalid)"
        )
    check_template(task, template)
    settings = {"template": template, "think": think, "shard_size": shard_size, "tokenizer": tokenizer_id}
    tokenizer = []  # built on the first shard left to do

    def make_shard(k: int) -> list[dict]:
        if not tokenizer:
            tokenizer.append(load_mask_tokenizer())
        rows = source.select(range(k * shard_size, min((k + 1) * shard_size, len(source)))).to_list()
        codes = _encode_shard(rows, tokenizer[0], batch_size, skip_invalid)
        return [_prepared_row(r, c, task, template, think) for r, c in zip(rows, codes) if c is not None]

    return write_shards(
        output_dir, task, settings, _fingerprint(source, task, settings), len(source), shard_size, make_shard, progress
    )


def write_shards(
    output_dir: str | Path,
    task: str,
    settings: dict,
    fingerprint: str,
    num_rows: int,
    shard_size: int,
    make_shard: Callable[[int], list[dict]],
    progress: bool = True,
    summary: dict | None = None,
) -> datasets.Dataset:
    """Write the prepared rows that `make_shard(k)` returns for the source rows `[k * shard_size, (k + 1) *
    shard_size)` as resumable parquet shards with `manifest.json`, skipping the shards a previous run finished; a
    folder with another `fingerprint` (other inputs or settings) is refused. `summary` is recorded in the manifest.
    Returns the folder loaded by [`load_prepared`]."""
    check_output_dir(output_dir)
    out = Path(output_dir)
    if not (out / MANIFEST).is_file() and any(out.rglob("*.parquet")):
        raise UsageError(
            f"{out} holds parquet files but no {MANIFEST}: not a samtok-rl prepare folder; use a new output_dir"
        )
    (out / "data").mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-num_rows // shard_size))
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint:
            raise UsageError(
                f"{manifest_path}: this folder was prepared from other inputs or settings "
                f"(task={manifest.get('task')}, settings={manifest.get('settings')}); use a new output_dir"
            )
    else:
        manifest = {
            "format": FORMAT_VERSION,
            "task": task,
            "settings": settings,
            "fingerprint": fingerprint,
            "num_rows": num_rows,
            "shards": {},
        }
        write_json_atomic(manifest_path, manifest)

    def finished(k: int) -> bool:
        entry = manifest["shards"].get(str(k))
        if entry is None or not (out / entry["file"]).is_file():
            return False
        try:  # a shard damaged since it was written is redone, not loaded
            intact = pq.read_metadata(out / entry["file"]).num_rows == entry["rows"]
        except (OSError, pa.ArrowInvalid):
            intact = False
        if not intact:
            logger.warning(
                "%s is damaged (unreadable or not %d rows): preparing it again", out / entry["file"], entry["rows"]
            )
        return intact

    todo = [k for k in range(n_shards) if not finished(k)]
    done_rows = sum(min(shard_size, num_rows - k * shard_size) for k in range(n_shards) if k not in todo)
    if todo:
        bar = tqdm(total=num_rows, initial=done_rows, desc=f"prepare {task}", unit="row", disable=not progress)
        for k in todo:
            prepared = make_shard(k)
            name = _shard_name(k, n_shards)
            tmp = out / (name + ".tmp")
            # pyarrow directly: the table keeps datasets' feature metadata, without a progress bar per shard.
            pq.write_table(datasets.Dataset.from_list(prepared, features=PREPARED_FEATURES).data.table, tmp)
            os.replace(tmp, out / name)
            manifest["shards"][str(k)] = {"file": name, "rows": len(prepared)}
            write_json_atomic(manifest_path, manifest)
            bar.update(len(prepared))
        bar.close()
    if not manifest.get("complete") or (summary is not None and manifest.get("summary") != summary):
        manifest["complete"] = True
        if summary is not None:
            manifest["summary"] = summary
        write_json_atomic(manifest_path, manifest)
    return load_prepared(out)


def prepare_easyr1(
    rows: EasyR1Rows,
    output_dir: str | Path,
    *,
    settings: dict,
    shard_size: int = 256,
    progress: bool = True,
) -> datasets.Dataset:
    """Write the checked rows of an authors' RL parquet file ([`read_easyr1`]) as a prepared folder.

    Embedded images are written once each to `<output_dir>/images/<sha256>.<ext>` (a temporary file renamed into
    place, so a resumed run never finds half an image); rows with a local image keep its path. Resumable like
    [`prepare`]: the fingerprint is the file's content and `settings`, and the summary is kept in the manifest.
    """
    if not rows.rows:
        raise UsageError(f"nothing to prepare: every row of {rows.path} was skipped ({rows.summary['skipped']})")
    out = Path(output_dir)
    fingerprint = hashlib.sha256(json.dumps([sha256_file(rows.path), settings], sort_keys=True).encode()).hexdigest()
    task = "+".join(sorted(rows.summary["tasks"]))

    images: list = []  # the file's `images` column, read once, when a shard left to do has embedded images

    def make_shard(k: int) -> list[dict]:
        chunk = rows.rows[k * shard_size : (k + 1) * shard_size]
        indices = rows.row_index[k * shard_size : (k + 1) * shard_size]
        prepared = []
        for row, index in zip(chunk, indices):
            ref = row["image"]
            if ref.path is None:
                if not images:
                    images.append(pq.read_table(rows.path, columns=["images"]).column("images"))
                path = out / "images" / ref.file_name()
                if not path.is_file():  # an image shared by several rows is written once
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(path.suffix + ".tmp")
                    tmp.write_bytes(images[0][index].as_py()[0]["bytes"])
                    os.replace(tmp, path)
                ref = type(ref)(path=path)
            prepared.append(
                {key: value for key, value in row.items() if key in PREPARED_FEATURES} | {"image": str(ref.path)}
            )
        return prepared

    return write_shards(
        out, task, settings, fingerprint, len(rows.rows), shard_size, make_shard, progress, summary=rows.summary
    )


def write_prepared(dataset: datasets.Dataset, output_dir: str | Path, task: str, settings: dict) -> Path:
    """Write `dataset` (the prepared columns, plus any others) as a finished prepared folder that [`load_prepared`]
    and training read: one parquet shard and a complete manifest. The shard is renamed into place before the manifest
    names it, so an interrupted write leaves no folder that loads."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _shard_name(0, 1)
    tmp = out / (name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(dataset.with_format("arrow")[:], tmp)  # the selected rows (`.data` would be the source's)
    os.replace(tmp, out / name)
    manifest = {"format": FORMAT_VERSION, "task": task, "settings": settings, "num_rows": len(dataset),
                "shards": {"0": {"file": name, "rows": len(dataset)}}, "complete": True}  # fmt: skip
    write_json_atomic(out / MANIFEST, manifest)
    return out


def prepared_tokenizer(output_dir: str | Path) -> str | None:
    """The mask tokenizer a prepared folder's GT codes were made with, as its manifest records it (None if unknown)."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("settings", {}).get("tokenizer") or None


def load_prepared(output_dir: str | Path) -> datasets.Dataset:
    """Load a folder written by [`prepare`] as one in-memory `datasets.Dataset`.

    Raises:
        `UsageError`: the folder's manifest is missing or lists unfinished shards, a shard lacks a column, or a row
            has no value where the trainer and the rewards need one (`prompt`, `image`, `solution`, `task`).
    """
    out = Path(output_dir)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise UsageError(f"{out} has no {MANIFEST}; run `samtok-rl prepare` first")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise UsageError(f"{manifest_path}: preparation is incomplete; re-run `samtok-rl prepare` to resume it")
    shards = [manifest["shards"][k]["file"] for k in sorted(manifest["shards"], key=int)]
    tables = []
    offset = 0
    for name in shards:
        try:
            table = pq.read_table(out / name)
        except (OSError, pa.ArrowInvalid) as err:
            raise UsageError(f"{out / name}: unreadable shard ({err}); re-run `samtok-rl prepare` to redo it") from err
        missing = [c for c in PREPARED_FEATURES if c not in table.column_names]
        if missing:
            raise UsageError(
                f"{out / name}: column(s) {missing} missing; prepare the dataset with `samtok-rl prepare`"
            )
        for column in REQUIRED_VALUES:
            nulls = table.column(column).null_count
            if nulls:
                row = table.column(column).to_pylist().index(None)
                raise UsageError(f"{out / name}, row {offset + row}: `{column}` is empty ({nulls} such rows)")
        tables.append(table.select(list(PREPARED_FEATURES)).cast(PREPARED_FEATURES.arrow_schema))
        offset += len(table)
    if offset == 0:
        raise UsageError(f"{out}: the prepared dataset has no rows (every row was skipped as invalid?)")
    return datasets.Dataset(InMemoryTable(pa.concat_tables(tables)))


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and command line.


@dataclass
class PrepareConfig:
    """What `samtok-rl prepare` reads, selects, prompts and writes (flags or the keys of `--config FILE.yaml`)."""

    output_dir: str = field(metadata={"help": "Output folder (resumable: finished shards are kept)."})
    task: str | None = field(
        default=None,
        metadata={
            "help": "gres (gRefCOCO) or gcg (GranD-f); with parquet: every row's task (default: from its source).",
            "choices": ["gres", "gcg"],
        },
    )
    parquet: str | None = field(
        default=None,
        metadata={"help": "An authors' RL parquet file (EasyR1: images, problem, answer, masks, source)."},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "With parquet: folder of the images of rows without bytes, found by file name."},
    )
    format_prompt: str | None = field(
        default=None,
        metadata={
            "help": "With parquet: EasyR1's data.format_prompt, r1v (think/answer) or none (the problem as is); "
            "default r1v for GRES rows, none for GCG rows (the authors' scripts).",
            "choices": ["r1v", "none"],
        },
    )
    no_target_share: float | None = field(
        default=None,
        metadata={"help": "With num_images (GRES): this share of the rows no-target (gres8k_train.parquet: 0.56)."},
    )
    sample: bool = field(default=False, metadata={"help": "Use the bundled real-photo sample instead of files."})
    refs: str | None = field(default=None, metadata={"help": "gRefCOCO grefs(unc).json"})
    instances: str | None = field(default=None, metadata={"help": "gRefCOCO instances.json"})
    annotations: str | None = field(default=None, metadata={"help": "GranD-f GranDf_HA_GCG_train.json"})
    images: str | None = field(default=None, metadata={"help": "Image folder."})
    split: str | None = field(
        default=None, metadata={"help": "gRefCOCO split to keep (train, val, testA, testB); default: all."}
    )
    skip_invalid: bool = field(default=False, metadata={"help": "Skip malformed rows with a warning."})
    num_images: int | None = field(
        default=None,
        metadata={"help": "Keep this many images, one row each (the reference RL set: 4000 with seed 42)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the image selection."})
    template: str | None = field(
        default=None, metadata={"help": "GRES template with {expression}, or the whole GCG question."}
    )
    think: bool = field(
        default=True, metadata={"help": "Add the R1 think/answer instruction (--no_think: leave it out)."}
    )
    mask_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "micro, a SAMTok model folder, a checkpoint file or a Hub id (or sam2_config + checkpoint)."
        },
    )
    sam2_config: str | None = field(
        default=None, metadata={"help": "sam2 YAML of the mask tokenizer (with checkpoint)."}
    )
    checkpoint: str | None = field(default=None, metadata={"help": "Mask tokenizer weights, .pth or .safetensors."})
    device: str | None = field(default=None, metadata={"help": "Default: this process's CUDA device, else cpu."})
    batch_size: int = field(default=32, metadata={"help": "Most masks per mask-tokenizer call."})
    shard_size: int = field(default=256, metadata={"help": "Rows per resumable shard."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress: don't)."})

    def __post_init__(self):
        if self.parquet is not None:
            given = [k for k in ("refs", "instances", "annotations", "images", "split", "num_images", "template")
                     if getattr(self, k) is not None] + (["sample"] if self.sample else [])  # fmt: skip
            if given:
                raise UsageError(f"parquet reads an authors' RL file: {given} apply to raw gRefCOCO / GranD-f files")
            if not self.think:
                raise UsageError("parquet: the think instruction is EasyR1's format prompt; set format_prompt to none")
            if self.sam2_config or self.checkpoint:
                raise UsageError(
                    "parquet: the codes are in the file; name the tokenizer they come from in mask_tokenizer"
                )
            check_output_dir(self.output_dir)
            return
        if self.image_root is not None:
            raise UsageError("image_root is for parquet files; raw gRefCOCO / GranD-f take their folder in images")
        if self.task not in ("gres", "gcg"):
            raise UsageError(f"task must be gres or gcg, got {self.task!r}")
        if self.no_target_share is not None:
            if not 0.0 <= self.no_target_share <= 1.0:
                raise UsageError(f"no_target_share must be in [0, 1], got {self.no_target_share}")
            if self.task != "gres" or self.num_images is None:
                raise UsageError("no_target_share applies to task gres with num_images")
        check_mask_tokenizer_source(self.mask_tokenizer, self.sam2_config, self.checkpoint)
        check_template(self.task, self.template)
        if self.num_images is not None and self.num_images < 1:
            raise UsageError(f"num_images must be >= 1, got {self.num_images}")
        # Before the source is read (minutes for GranD-f): a bad output folder or mask tokenizer fails now.
        check_output_dir(self.output_dir)
        check_mask_tokenizer_files(self.mask_tokenizer, self.sam2_config, self.checkpoint)

    @property
    def think_for_parquet(self) -> bool | None:
        """`format_prompt` as `read_easyr1`'s `think` (None: by each row's task)."""
        return None if self.format_prompt is None else self.format_prompt == "r1v"

    @property
    def mask_tokenizer_id(self) -> str:
        """How the mask tokenizer is named in the manifest (a resume with another one is refused)."""
        return str(self.mask_tokenizer or f"{self.sam2_config}:{self.checkpoint}")


def run(config: PrepareConfig) -> datasets.Dataset:
    """Prepare the dataset `config` describes (`samtok-rl prepare` from Python) and return it.

    Example:
    >>> import tempfile
    >>> config = PrepareConfig(task="gres", output_dir=tempfile.mkdtemp(), sample=True, split="val",
    ...                        mask_tokenizer="micro", device="cpu", progress=False)
    >>> dataset = run(config)
    >>> len(dataset), dataset[0]["task"]
    (4, 'gres')
    """
    if config.parquet is not None:
        return run_easyr1(config)
    source = read_source(
        config.task,
        refs=config.refs,
        instances=config.instances,
        annotations=config.annotations,
        images=config.images,
        sample=config.sample,
        split=config.split,
        skip_invalid=config.skip_invalid,
    )
    if config.no_target_share is not None:
        picked = select_with_no_target_share(
            source["image"], source["no_target"], config.num_images, config.no_target_share, config.seed
        )
        source = source.select(picked)
    elif config.num_images is not None:
        source = source.select(select_one_per_image(source["image"], config.num_images, config.seed))
    return prepare(
        source,
        config.task,
        config.output_dir,
        lambda: build_mask_tokenizer(
            config.mask_tokenizer, config.sam2_config, config.checkpoint, config.device, drop_memory_modules=True
        ),
        template=config.template,
        think=config.think,
        shard_size=config.shard_size,
        batch_size=config.batch_size,
        tokenizer_id=config.mask_tokenizer_id,
        progress=config.progress,
        skip_invalid=config.skip_invalid,
    )


# The tokenizer the released RL files' codes come from: VQ-SAM2 (hiera-L), as released in every SAMTok model folder.
AUTHORS_MASK_TOKENIZER = "zhouyik/Qwen3-VL-8B-SAMTok"


def run_easyr1(config: PrepareConfig) -> datasets.Dataset:
    """Convert an authors' RL parquet file into a prepared folder and print its summary."""
    rows = read_easyr1(config.parquet, config.image_root, think=config.think_for_parquet, task=config.task,
                       skip_invalid=config.skip_invalid)  # fmt: skip
    print(f"{config.parquet}:\n{format_summary(rows.summary)}", flush=True)
    settings = {
        "source": "easyr1",
        "file": Path(config.parquet).name,
        "image_root": str(Path(config.image_root).resolve()) if config.image_root else None,
        "think": config.think_for_parquet,
        "task": config.task,
        "skip_invalid": config.skip_invalid,
        "shard_size": config.shard_size,
        "tokenizer": config.mask_tokenizer or AUTHORS_MASK_TOKENIZER,
    }
    return prepare_easyr1(rows, config.output_dir, settings=settings, shard_size=config.shard_size,
                          progress=config.progress)  # fmt: skip


def make_parser():
    """The `samtok-rl prepare` parser (`--config FILE.yaml` and the fields of [`PrepareConfig`])."""
    return config_parser([PrepareConfig], prog="samtok-rl prepare", description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> datasets.Dataset:
    """Run `samtok-rl prepare` (also `python -m samtok_rl.prepare`)."""
    (config,) = make_parser().parse_args_and_config(args=None if argv is None else list(argv))
    setup_logging()
    result = run(config)
    logger.info("wrote %d rows to %s", len(result), config.output_dir)
    return result


if __name__ == "__main__":
    sys.exit(report_errors("prepare", main))
