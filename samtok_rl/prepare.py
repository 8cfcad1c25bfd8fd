"""`samtok-rl prepare`: turn gRefCOCO / GranD-f into an RL dataset with mask-token answers.

Every ground-truth mask is tokenized offline into its two codes with the SAMTok mask tokenizer, and the reference
answer (`solution`) is written with those codes, so training never runs the tokenizer. The output folder holds
parquet shards plus `manifest.json`; a re-run skips finished shards and never rewrites them, so an interrupted run
resumes where it stopped. Load the result with [`load_prepared`].

Example (the bundled sample, GRES, with SAMTok's released tokenizer):

    samtok-rl prepare --task gres --sample --split train --mask-tokenizer zhouyik/Qwen3-VL-8B-SAMTok --output out/gres
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable
from PIL import Image
from tqdm.auto import tqdm

from samtok_rl.data import decode_rle, read_grandf_gcg, read_grefcoco, sample_paths
from samtok_rl.data.grefcoco import RLE
from samtok_rl.prompts import (
    GCG_QUESTION,
    GRES_TEMPLATE,
    NO_TARGET,
    OBJ_REF_END,
    OBJ_REF_START,
    conversation,
    gcg_question,
    gres_question,
)
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


def select_one_per_image(images: Sequence[str], num_images: int, seed: int = 42) -> list[int]:
    """Pick `num_images` images and one row per picked image, as the reference RL set was drawn (rewards.md §9).

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
            raise ValueError("--task gres needs --refs, --instances and --images (or --sample)")
        return read_grefcoco(refs, instances, images, splits=split, skip_invalid=skip_invalid)
    if task == "gcg":
        if annotations is None or images is None:
            raise ValueError("--task gcg needs --annotations and --images (or --sample)")
        return read_grandf_gcg(annotations, images, skip_invalid=skip_invalid)
    raise ValueError(f"unknown task {task!r}; expected 'gres' or 'gcg'")


# ---------------------------------------------------------------------------------------------------------------------
# Sharded, resumable preparation.


def _fingerprint(source: datasets.Dataset, task: str, settings: dict) -> str:
    """Hash of the selected input rows and the settings, so a resume never mixes shards of different inputs."""
    h = hashlib.sha256(json.dumps({"task": task, "settings": settings}, sort_keys=True).encode())
    for row in source:
        key = [row["image"], row.get("expression", ""), row.get("caption", ""), [m["counts"] for m in row["gt_masks"]]]
        h.update(json.dumps(key).encode())
    return h.hexdigest()


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # atomic on POSIX: a crash leaves the old manifest or the new one, never half of one


def _shard_name(index: int, count: int) -> str:
    return f"data/train-{index:05d}-of-{count:05d}.parquet"


def _encode_shard(rows: list[dict], tokenizer, batch_size: int) -> list[np.ndarray]:
    """Codes `(K, 2)` per row; one image-encoder pass per distinct image of the shard, masks in chunks."""
    by_image: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_image.setdefault(row["image"], []).append(i)
    codes: list[np.ndarray] = [np.zeros((0, 2), np.int64) for _ in rows]
    for path, indices in by_image.items():
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
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
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

    Returns:
        `datasets.Dataset`: the prepared rows (see [`load_prepared`]).
    """
    if task not in ("gres", "gcg"):
        raise ValueError(f"unknown task {task!r}; expected 'gres' or 'gcg'")
    out = Path(output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    settings = {"template": template, "think": think, "shard_size": shard_size, "tokenizer": tokenizer_id}
    fingerprint = _fingerprint(source, task, settings)
    n_shards = max(1, -(-len(source) // shard_size))
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{manifest_path}: this folder was prepared from other inputs or settings "
                f"(task={manifest.get('task')}, settings={manifest.get('settings')}); use a new --output folder"
            )
    else:
        manifest = {
            "format": FORMAT_VERSION,
            "task": task,
            "settings": settings,
            "fingerprint": fingerprint,
            "num_rows": len(source),
            "shards": {},
        }
        _write_json_atomic(manifest_path, manifest)

    def finished(k: int) -> bool:
        return str(k) in manifest["shards"] and (out / manifest["shards"][str(k)]["file"]).is_file()

    todo = [k for k in range(n_shards) if not finished(k)]
    done_rows = sum(min(shard_size, len(source) - k * shard_size) for k in range(n_shards) if k not in todo)
    if todo:
        tokenizer = load_mask_tokenizer()
        bar = tqdm(total=len(source), initial=done_rows, desc=f"prepare {task}", unit="row", disable=not progress)
        for k in todo:
            rows = source.select(range(k * shard_size, min((k + 1) * shard_size, len(source)))).to_list()
            codes = _encode_shard(rows, tokenizer, batch_size)
            prepared = [_prepared_row(r, c, task, template, think) for r, c in zip(rows, codes)]
            name = _shard_name(k, n_shards)
            tmp = out / (name + ".tmp")
            # pyarrow directly: the table keeps datasets' feature metadata, without a progress bar per shard.
            pq.write_table(datasets.Dataset.from_list(prepared, features=PREPARED_FEATURES).data.table, tmp)
            os.replace(tmp, out / name)
            manifest["shards"][str(k)] = {"file": name, "rows": len(prepared)}
            _write_json_atomic(manifest_path, manifest)
            bar.update(len(prepared))
        bar.close()
    if not manifest.get("complete"):
        manifest["complete"] = True
        _write_json_atomic(manifest_path, manifest)
    return load_prepared(out)


def load_prepared(output_dir: str | Path) -> datasets.Dataset:
    """Load a folder written by [`prepare`] as one in-memory `datasets.Dataset`.

    Raises:
        `ValueError`: the folder's manifest is missing or lists unfinished shards.
    """
    out = Path(output_dir)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{out} has no {MANIFEST}; run `samtok-rl prepare` first")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise ValueError(f"{manifest_path}: preparation is incomplete; re-run `samtok-rl prepare` to resume it")
    shards = [manifest["shards"][k]["file"] for k in sorted(manifest["shards"], key=int)]
    table = pa.concat_tables([pq.read_table(out / f, schema=PREPARED_FEATURES.arrow_schema) for f in shards])
    return datasets.Dataset(InMemoryTable(table))


# ---------------------------------------------------------------------------------------------------------------------
# Command line.


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `samtok-rl prepare` argument parser (fills `parser` when given, for the subcommand)."""
    parser = parser or argparse.ArgumentParser(prog="samtok-rl prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("gres", "gcg"), required=True)
    parser.add_argument("--output", type=Path, required=True, help="output folder (resumable)")
    src = parser.add_argument_group("source")
    src.add_argument("--sample", action="store_true", help="use the bundled real-photo sample")
    src.add_argument("--refs", type=Path, help="gRefCOCO grefs(unc).json")
    src.add_argument("--instances", type=Path, help="gRefCOCO instances.json")
    src.add_argument("--annotations", type=Path, help="GranD-f GranDf_HA_GCG_train.json")
    src.add_argument("--images", type=Path, help="image folder")
    src.add_argument("--split", default=None, help="gRefCOCO split to keep (train, val, testA, testB); default: all")
    src.add_argument("--skip-invalid", action="store_true", help="skip malformed rows with a warning")
    sel = parser.add_argument_group("selection (reference RL set: --num-images 4000 --seed 42)")
    sel.add_argument("--num-images", type=int, default=None, help="keep this many images, one row each")
    sel.add_argument("--seed", type=int, default=42)
    prm = parser.add_argument_group("prompt")
    prm.add_argument("--template", default=None, help="GRES template with {expression}, or the whole GCG question")
    prm.add_argument("--no-think", action="store_true", help="leave out the R1 think/answer instruction")
    tok = parser.add_argument_group("mask tokenizer")
    tok.add_argument("--mask-tokenizer", default=None, help="SAMTok model folder, checkpoint file or Hub id, or `micro` (the seeded micro tokenizer)")
    tok.add_argument("--sam2-config", type=Path, default=None, help="sam2 YAML (with --checkpoint)")
    tok.add_argument("--checkpoint", type=Path, default=None, help="tokenizer weights, .pth or .safetensors")
    tok.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    tok.add_argument("--batch-size", type=int, default=32, help="most masks per tokenizer call")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per resumable shard")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _tokenizer_loader(args) -> tuple[Callable[[], object], str]:
    if (args.sam2_config is None) != (args.checkpoint is None):
        raise SystemExit("--sam2-config and --checkpoint go together")
    if (args.mask_tokenizer is None) == (args.checkpoint is None):
        raise SystemExit("give either --mask-tokenizer or --sam2-config + --checkpoint")

    def load():
        import torch

        from samtok_rl.mask_tokenizer import MaskTokenizer, load_mask_tokenizer

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.mask_tokenizer is not None:
            return load_mask_tokenizer(args.mask_tokenizer, device=device, drop_memory_modules=True)
        return MaskTokenizer.from_files(args.sam2_config, args.checkpoint, device=device, drop_memory_modules=True)

    described = args.mask_tokenizer or f"{args.sam2_config}:{args.checkpoint}"
    return load, str(described)


def main(argv: Sequence[str] | None = None) -> None:
    """Run `samtok-rl prepare` (also `python -m samtok_rl.prepare`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    load, tokenizer_id = _tokenizer_loader(args)
    source = read_source(
        args.task,
        refs=args.refs,
        instances=args.instances,
        annotations=args.annotations,
        images=args.images,
        sample=args.sample,
        split=args.split,
        skip_invalid=args.skip_invalid,
    )
    if args.num_images is not None:
        source = source.select(select_one_per_image(source["image"], args.num_images, args.seed))
    result = prepare(
        source,
        args.task,
        args.output,
        load,
        template=args.template,
        think=not args.no_think,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        tokenizer_id=tokenizer_id,
        progress=not args.no_progress,
    )
    logger.info("wrote %d rows to %s", len(result), args.output)


if __name__ == "__main__":
    main()
