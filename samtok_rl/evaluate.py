"""`samtok-rl eval`: GRES (gRefCOCO) and GCG (GranD-f) evaluation of a SAMTok VLM, as the SAMTok paper reports it.

The runner follows SAMTok's eval protocol (its `evaluation/` scripts): greedy decoding of the task prompt
(the R1 think/answer suffix with `--think`), text decoded with `skip_special_tokens=False`, mask spans parsed from the
answer part with the codec's repair rules, masks decoded with the SAMTok mask tokenizer at the original image size,
then ReLA's GRES accounting (gIoU / cIoU / N-acc) or the GLaMM GCG evaluator (METEOR / CIDEr / AP50 / mIoU / Recall).

Each split writes `predictions_<split>.jsonl` (one line per sample: prediction text, codes, RLE masks) in the output
folder; a re-run skips the samples already there, so an interrupted evaluation resumes. `metrics.json` holds the
metrics per split, the parse statistics and every setting that changes the numbers (`max_pixels`, `max_new_tokens`,
prompt, backend, seed).

Example (the bundled sample, the tiny random VLM and the seeded micro mask tokenizer, on CPU):

    samtok-rl eval --task gres --sample --split val --model "$(python -c 'from samtok_rl.tiny import build_tiny_vlm; print(build_tiny_vlm())')" \
        --mask_tokenizer micro --output_dir out/eval-gres --max_new_tokens 16 --max_pixels 12544
    samtok-rl eval --config recipes/eval/gres_qwen2_5_vl_3b_rl.yaml
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoTokenizer, set_seed

from samtok_rl.cli import config_parser, report_errors
from samtok_rl.data import read_grandf_gcg_gt, read_grefcoco, sample_paths
from samtok_rl.errors import UsageError
from samtok_rl.files import check_local_path, check_model_folder, check_output_dir, open_rgb, read_json_lines
from samtok_rl.generation import HFGenerator, VLLMGenerator, resolve_backend
from samtok_rl.logs import setup_logging
from samtok_rl.mask_tokenizer import (
    build_mask_tokenizer,
    check_mask_tokenizer_files,
    check_mask_tokenizer_source,
    default_device,
)
from samtok_rl.masks import decode_rle, rle_from_mask
from samtok_rl.metrics import (
    GCG_COLUMNS,
    GRES_COLUMNS,
    BertTextSimilarity,
    format_table,
    gcg_metrics,
    gres_metrics,
    union_masks,
)
from samtok_rl.paper import paper_numbers, with_paper
from samtok_rl.parsing import GRES_MAX_SPANS, clean_output, gcg_caption, parse_gcg_output, parse_gres
from samtok_rl.prompts import (
    GCG_QUESTION,
    GRES_TEMPLATE,
    asks_to_think,
    check_template,
    gcg_question,
    gres_question,
    message_text,
)
from samtok_rl.tiny import resolve_model_path
from samtok_rl.tokens import missing_mask_tokens


logger = logging.getLogger(__name__)

TASKS = ("gres", "gcg")
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "eval_settings.json"

# SAMTok's eval scripts: RL models (think/answer prompt) get a longer generation budget.
MAX_NEW_TOKENS = {("gres", True): 1024, ("gcg", True): 2048, ("gres", False): 128, ("gcg", False): 512}
# The RL recipe's image resolution (EasyR1 config: 3136 / 1,605,632 = 4 to 2048 merged 28x28 patches). The eval
# fixes it instead of inheriting each checkpoint's processor default, because the numbers move with it.
DEFAULT_MIN_PIXELS = 3136
DEFAULT_MAX_PIXELS = 1_605_632
DEFAULT_BATCH_SIZE = {"hf": 8, "vllm": 512}


# ---------------------------------------------------------------------------------------------------------------------
# Data.


@dataclass(frozen=True)
class Sample:
    """One evaluation sample: a GRES sentence or a GCG image."""

    id: str
    image: str
    question: str
    expression: str = ""  # gres
    image_id: str = ""  # gcg (GranD-f file stem)


def _first(candidates: Sequence[Path], what: str, folder: bool = False) -> Path:
    """The first existing candidate file (or folder); the error lists every place tried."""
    for path in candidates:
        if path.is_dir() if folder else path.is_file():
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    hint = "\nname it with `images`" if folder else ""
    raise UsageError(f"cannot find {what}; tried:\n  {tried}{hint}")


def read_split(task: str, data: Path, split: str, images: Path | None = None):
    """Read one split of a gRefCOCO or GranD-f val/test layout as a `datasets.Dataset` of the data readers.

    Layouts (the first match wins; `--images` overrides the image folder):
    - GRES: `grefs(unc).json` + `instances.json` in `data` (or `data/grefcoco`); images in `data/images/train2014`,
      `data/images`, `data/train2014`, `data/coco2014/train2014` or `data/../images`.
    - GCG: `{split}_gcg_coco_caption_gt.json` + `{split}_gcg_coco_mask_gt.json` in `data/annotations/val_test`,
      `data/val_test` or `data`; images in `data/GranDf_HA_images/val_test`, `data/images/val_test`,
      `data/images/grandf/val_test`, `data/images` or `data/../images`.
    """

    data = Path(data)
    if data.suffix == ".parquet":
        return read_parquet_split(task, data, images)
    if is_prepared(data):
        from samtok_rl.prepare import load_prepared

        return rows_from_prepared(load_prepared(data), task, data)
    if task == "gres":
        refs = _first([data / "grefs(unc).json", data / "grefcoco" / "grefs(unc).json"], "grefs(unc).json")
        root = refs.parent
        image_dir = images or _first(
            [root / "images" / "train2014", root / "images", root / "train2014", root / "coco2014" / "train2014",
             root.parent / "images"],
            "the gRefCOCO image folder (COCO train2014)",
            folder=True,
        )  # fmt: skip
        return read_grefcoco(refs, root / "instances.json", image_dir, splits=split)
    names = (f"{split}_gcg_coco_caption_gt.json", f"{split}_gcg_coco_mask_gt.json")
    folders = [data / "annotations" / "val_test", data / "val_test", data]
    caption_file = _first([f / names[0] for f in folders], names[0])
    image_dir = images or _first(
        [data / "GranDf_HA_images" / "val_test", data / "images" / "val_test", data / "images" / "grandf" / "val_test",
         data / "images", data.parent / "images"],
        "the GranD-f val_test image folder",
        folder=True,
    )  # fmt: skip
    return read_grandf_gcg_gt(caption_file, caption_file.parent / names[1], image_dir)


def read_parquet_split(task: str, data: Path, images: Path | None):
    """The `task` rows of an authors' RL parquet file (converted once into the cache, as `dataset:` in training),
    each with the `question` its prompt asks; `images` is the folder of rows without image bytes."""
    from samtok_rl.loading import load_parquet

    return rows_from_prepared(load_parquet(str(data), str(images) if images else None), task, data)


def is_prepared(data: Path) -> bool:
    """Whether `data` is a folder written by `samtok-rl prepare` (its manifest names it)."""
    from samtok_rl.prepare import MANIFEST

    return (Path(data) / MANIFEST).is_file()


def rows_from_prepared(prepared, task: str, where) -> datasets.Dataset:
    """The `task` rows of a prepared dataset as eval rows, each with the `question` its prompt asks and its GT masks
    (the same rows training reads: an eval split in training and `samtok-rl eval --data <folder>` agree)."""
    rows = []
    for row in prepared.filter(lambda r: r["task"] == task):
        index = len(rows)
        common = {"image": row["image"], "question": message_text(row["prompt"]), "gt_masks": row["gt_masks"]}
        if task == "gres":
            rows.append(common | {"expression": row["expression"], "no_target": row["no_target"], "ref_id": index,
                                  "sent_id": 0})  # fmt: skip
        else:
            rows.append(common | {"image_id": str(index), "caption": gcg_caption(row["solution"]),
                                  "phrases": row["phrases"]})  # fmt: skip
    if not rows:
        raise UsageError(f"{where} has no {task} rows (its tasks: {sorted(set(prepared['task']))})")
    return datasets.Dataset.from_list(rows)


def load_split(
    task: str, data: Path, split: str, images: str | None, think: bool, template: str | None, limit: int | None = None
) -> tuple[list[Sample], list[dict]]:
    """The samples of one split and their ground-truth rows (with the sample's `id`), in dataset order.

    From an authors' parquet file each sample asks its row's own question, and `think` must match what the questions
    ask (the authors' GRES rows ask to think, their GCG rows do not): the answers are parsed accordingly."""
    rows = read_split(task, Path(data), split, Path(images) if images else None)
    if "question" in rows.column_names:
        if template is not None:
            raise UsageError(f"template: the rows of {data} carry their own questions")
        asks = {asks_to_think(q) for q in rows["question"]}
        if asks != {think}:
            raise UsageError(
                f"{data}: its {task} questions {'mix asking and not asking' if len(asks) > 1 else 'ask' if True in asks else 'do not ask'} "
                f"for <think>/<answer> while think is {think}: set {'--no_think' if think else '--think true'} to parse "
                "the answers as asked"
            )
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    samples = make_samples(task, rows, think, template)
    if not samples:
        raise UsageError(f"split {split!r} of {data} has no samples")
    return samples, [dict(r, id=s.id) for r, s in zip(rows, samples)]


def make_samples(task: str, rows, think: bool, template: str | None = None) -> list[Sample]:
    """One `Sample` per row, with a stable id (GRES: `ref_id-sent_id`, GCG: the image id) used for resuming."""
    samples, seen = [], {}
    for row in rows:
        own = row.get("question")  # the rows of an authors' parquet file ask their own
        if task == "gres":
            key = f"{row['ref_id']}-{row['sent_id']}"
            question = own or gres_question(row["expression"], think=think, template=template or GRES_TEMPLATE)
            sample = Sample(key, row["image"], question, expression=row["expression"])
        else:
            key = str(row["image_id"])
            question = own or gcg_question(think=think, question=template or GCG_QUESTION)
            sample = Sample(key, row["image"], question, image_id=key)
        # Duplicated ids (should not happen in the public files) get an occurrence suffix, deterministically.
        count = seen.get(sample.id, 0)
        seen[sample.id] = count + 1
        if count:
            sample = Sample(f"{sample.id}#{count}", sample.image, sample.question, sample.expression, sample.image_id)
        samples.append(sample)
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# Predictions: generate, parse, decode, write.


def read_jsonl(path: Path, quarantine: bool = True) -> list[dict]:
    """Read a predictions file for resuming. Blank lines are skipped; a line that is not a JSON record (a torn write
    from an interrupted run, or damage) is moved to `<file>.rejected` with a warning, so its sample is generated
    again and nothing is lost. Readers that must not change the folder (`samtok-rl inspect`) pass
    `quarantine=False`: such lines are then skipped with the warning only."""
    records, rejected = read_json_lines(path, key="id")
    if rejected and not quarantine:
        logger.warning(
            "%s: line(s) %s are not prediction records and are left out", path, ", ".join(str(k) for k, _ in rejected)
        )
    elif rejected:
        logger.warning(
            "%s: line(s) %s are not prediction records: moved to %s.rejected, their samples are generated again",
            path, ", ".join(str(k) for k, _ in rejected), path.name,
        )  # fmt: skip
        with open(path.with_name(path.name + ".rejected"), "a", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for _, line in rejected))
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def predict_records(
    task: str,
    samples: Sequence[Sample],
    texts: Sequence[str],
    images: Sequence[Image.Image],
    mask_tokenizer,
    think: bool,
    split: str,
) -> list[dict]:
    """Parse the outputs of a batch, decode their masks in one `decode_batch` call, and build the JSONL records.

    GRES records keep one RLE per decoded span (the metric takes their union; none = the no-target answer). GCG
    records keep one RLE per phrase, in phrase order; a phrase without a span gets an all-empty mask.
    """

    parsed = [parse_gres(t, think) if task == "gres" else parse_gcg_output(t, think) for t in texts]
    arrays = [np.asarray(image) for image in images]
    codes = [np.array([c for c in p["codes"] if c is not None], dtype=np.int64).reshape(-1, 2) for p in parsed]
    # Only outputs with spans reach the tokenizer: an empty answer needs no image-encoder pass.
    with_codes = [k for k, c in enumerate(codes) if len(c)]
    decoded = [np.zeros((0, *arr.shape[:2]), dtype=bool) for arr in arrays]  # (N_i, H, W) bool each
    if with_codes:
        for k, masks in zip(with_codes, mask_tokenizer.decode_batch([(arrays[k], codes[k]) for k in with_codes])):
            decoded[k] = masks
    records = []
    for sample, text, arr, p, masks in zip(samples, texts, arrays, parsed, decoded):
        height, width = arr.shape[:2]
        if task == "gcg":
            empty = np.zeros((height, width), dtype=bool)
            it = iter(masks)
            masks = [empty if c is None else next(it) for c in p["codes"]]
        record = {"id": sample.id, "split": split, "image": sample.image, "size": [height, width], "text": text}
        if task == "gres":
            record["expression"] = sample.expression
        else:
            record["image_id"] = sample.image_id
        record.update(p)
        record["masks"] = [rle_from_mask(m) for m in masks]
        records.append(record)
    return records


def generate_records(
    task: str,
    samples: Sequence[Sample],
    generator,
    mask_tokenizer,
    think: bool,
    split: str,
    batch_size: int,
    write: Callable[[list[dict]], None] | None = None,
) -> tuple[list[dict], float]:
    """Answer `samples` with `generator` in batches and turn the answers into prediction records: the one path from
    a model's text to decoded masks, shared by `samtok-rl eval` and the evaluation during training.

    Returns:
        `tuple[list[dict], float]`: the records in `samples` order and the seconds spent generating. `write` is called
        with each batch's records as soon as they exist (the eval appends them to its predictions file).
    """
    strip_tokens = generator.strip_tokens()
    records, seconds = [], 0.0
    for k in range(0, len(samples), batch_size):
        batch = samples[k : k + batch_size]
        images = [open_rgb(s.image) for s in batch]
        t0 = time.perf_counter()
        texts = generator.generate([s.question for s in batch], images)
        seconds += time.perf_counter() - t0
        texts = [clean_output(t, strip_tokens) for t in texts]
        batch_records = predict_records(task, batch, texts, images, mask_tokenizer, think, split)
        if write is not None:
            write(batch_records)
        records += batch_records
    return records, seconds


# ---------------------------------------------------------------------------------------------------------------------
# Metrics.


class _LazyMasks(Sequence):
    """A sequence of `(H, W)` bool masks decoded on access, so a full split never sits in memory at once."""

    def __init__(self, make: Callable[[int], np.ndarray], length: int):
        self._make, self._length = make, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._make(index)


def _union(rles: Sequence[dict], size: Sequence[int]) -> np.ndarray:

    return union_masks((decode_rle(rle) for rle in rles), tuple(size))


def score_gres(records: Sequence[dict], rows) -> dict:
    """GRES metrics of one split (`metrics.gres_metrics`) plus the parse statistics."""

    gt = {r["id"]: r for r in rows}
    preds = _LazyMasks(lambda k: _union(records[k]["masks"], records[k]["size"]), len(records))
    gts = _LazyMasks(lambda k: _union(gt[records[k]["id"]]["gt_masks"], records[k]["size"]), len(records))
    metrics = gres_metrics(preds, gts)
    metrics["parse"] = {
        "no_answer_tag": sum(not r["found_answer"] for r in records),
        "empty_predictions": sum(not r["codes"] for r in records),
        "capped_over_10_spans": sum(r["capped"] for r in records),
        "missing_level1_code": sum(c[1] == -1 for r in records for c in r["codes"]),
    }
    return metrics


def score_gcg(records: Sequence[dict], rows, text_similarity=None) -> dict:
    """GCG metrics of one split (`metrics.gcg_metrics`) plus the phrase/span pairing statistics."""

    gt = {r["id"]: r for r in rows}
    predictions = [{"caption": r["caption"], "phrases": r["phrases"], "masks": r["masks"]} for r in records]
    references = [
        {"caption": gt[r["id"]]["caption"], "labels": gt[r["id"]]["phrases"], "masks": gt[r["id"]]["gt_masks"],
         "image_id": r["image_id"]}
        for r in records
    ]  # fmt: skip
    metrics = gcg_metrics(predictions, references, text_similarity=text_similarity)
    metrics["parse"] = {
        "no_answer_tag": sum(not r["found_answer"] for r in records),
        "no_phrases": sum(not r["phrases"] for r in records),
        "phrases": sum(len(r["phrases"]) for r in records),
        "phrases_without_span": sum(r["phrases_without_span"] for r in records),
        "spans_without_phrase": sum(r["spans_without_phrase"] for r in records),
        "samples_with_mismatch": sum(bool(r["phrases_without_span"] or r["spans_without_phrase"]) for r in records),
    }
    return metrics


def score_split(task: str, records: Sequence[dict], rows, text_similarity=None) -> dict:
    """The task's metrics of one split's records (in dataset order) against its GT rows."""
    return score_gres(records, rows) if task == "gres" else score_gcg(records, rows, text_similarity)


def write_glamm_predictions(records: Sequence[dict], folder: Path) -> None:
    """Write GLaMM-evaluator prediction files, one `<image_id>.json` per image (the GLaMM evaluator's input format), for cross-checks."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        payload = {
            "image_id": r["image_id"],
            "caption": r["caption"],
            "phrases": r["phrases"],
            "pred_masks": r["masks"],
        }
        (folder / f"{r['image_id']}.json").write_text(json.dumps(payload))


# ---------------------------------------------------------------------------------------------------------------------
# The runner.


GREEDY = "greedy (do_sample=False, top_p=1.0)"


def eval_settings(
    task: str, model: str, data: str, images: str | None, backend: str, think: bool, template: str | None,
    max_new_tokens: int, min_pixels: int | None, max_pixels: int | None, seed: int, mask_tokenizer: str,
    decoding: str = GREEDY,
) -> dict:  # fmt: skip
    """`eval_settings.json`: everything that changes the predictions (a resumed eval must match it), as `samtok-rl
    eval` and the evaluations during training both record it."""
    return {
        "task": task, "model": model, "data": data, "images": images, "backend": backend, "think": think,
        "template": template, "max_new_tokens": max_new_tokens, "min_pixels": min_pixels, "max_pixels": max_pixels,
        "seed": seed, "mask_tokenizer": mask_tokenizer,
        "gres_span_cap": GRES_MAX_SPANS if (task == "gres" and think) else None,
        "decoding": f"{decoding}, skip_special_tokens=False",
    }  # fmt: skip


def _settings(args, backend: str, max_new_tokens: int, data: Path) -> dict:
    """The settings of `samtok-rl eval` (see [`eval_settings`])."""
    images = None if args.images is None else str(Path(args.images).resolve())
    return eval_settings(
        args.task, str(args.model), str(data.resolve()), images, backend, args.think, args.template, max_new_tokens,
        args.min_pixels, args.max_pixels, args.seed,
        f"{args.sam2_config}:{args.checkpoint}" if args.checkpoint else args.mask_tokenizer_source,
    )  # fmt: skip


def check_inputs(args: EvalConfig, mask_tokenizer=None) -> None:
    """What would otherwise fail after the data is read or the model is loaded, or with a traceback: an
    `output_dir` that is a file, a model folder without `config.json` (its tokenizer would fail to load with a
    sentencepiece error) and a mask tokenizer whose local files are missing or empty."""
    check_output_dir(args.output_dir)
    check_model_folder(args.model, "model")
    if mask_tokenizer is None:
        # The model's own folder holds its mask tokenizer unless one is named: say which option to fix.
        what = "model" if args.mask_tokenizer is None and args.checkpoint is None else "mask_tokenizer"
        source = None if args.checkpoint else args.mask_tokenizer_source
        check_mask_tokenizer_files(source, args.sam2_config, args.checkpoint, what=what)


def evaluate(args: EvalConfig, generator=None, text_similarity=None, mask_tokenizer=None) -> dict:
    """Run the evaluation `args` describes and return the content of `metrics.json` (`samtok-rl eval` from Python).

    Args:
        args (`EvalConfig`): what to evaluate and how.
        generator (*optional*): an object with `generate(questions, images) -> list[str]`, `image_resolution()` and
            `strip_tokens()`; built from `args.backend` when `None` (only when some sample still needs generating).
        text_similarity (*optional*): GCG Recall's `text_similarity(labels, phrases)`; defaults to
            `BertTextSimilarity(args.text_encoder)`.
        mask_tokenizer (`MaskTokenizer`, *optional*): an already loaded tokenizer (its image-feature cache is
            reused); loaded from the mask-tokenizer options when `None`.

    Returns:
        `dict`: `settings`, `splits` (metrics per split), `run` (`generated`, `resumed`, timings).
    """

    check_inputs(args, mask_tokenizer)
    start = time.perf_counter()
    set_seed(args.seed)
    device = args.device or default_device()
    backend = resolve_backend(args.backend, device)
    max_new_tokens = args.max_new_tokens or MAX_NEW_TOKENS[(args.task, args.think)]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = (
        Path(args.data) if args.data else Path(sample_paths().root) / ("grefcoco" if args.task == "gres" else "grandf")
    )
    splits = [s for s in args.split.split(",") if s]
    if (data.suffix == ".parquet" or is_prepared(data)) and len(splits) != 1:
        what = "one parquet file" if data.suffix == ".parquet" else "one prepared split"
        raise UsageError(f"data {data} is {what}: give one split name to label it, not {args.split!r}")
    rows_by_split, samples_by_split = {}, {}
    for split in splits:
        samples_by_split[split], rows_by_split[split] = load_split(
            args.task, data, split, args.images, args.think, args.template, args.limit
        )

    # Predictions already on disk, first record per id (the resume key).
    done: dict[str, dict[str, dict]] = {}
    for split in splits:
        done[split] = {}
        for record in read_jsonl(out_dir / f"predictions_{split}.jsonl"):
            done[split].setdefault(record["id"], record)
    todo = {s: [x for x in samples_by_split[s] if x.id not in done[s]] for s in splits}
    num_todo = sum(len(v) for v in todo.values())
    resumed = sum(len(samples_by_split[s]) - len(todo[s]) for s in splits)

    # Settings: compared with the previous run's before anything is appended to its predictions (of any split).
    settings = _settings(args, backend, max_new_tokens, data)
    settings_path = out_dir / SETTINGS_FILE
    previous = json.loads(settings_path.read_text()) if settings_path.is_file() else None
    has_predictions = any(p.stat().st_size for p in out_dir.glob("predictions_*.jsonl"))
    if previous is not None and has_predictions and previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise UsageError(
            f"{out_dir} holds predictions made with other settings ({', '.join(changed)}); use another output_dir"
        )
    owned = generator is None and num_todo > 0  # a generator this call builds is also closed by it
    if num_todo:
        # Before the generation engine starts (minutes with vLLM): a bad mask tokenizer fails now, not after it.
        mask_tokenizer = mask_tokenizer or build_mask_tokenizer(
            None if args.checkpoint else args.mask_tokenizer_source,
            args.sam2_config,
            args.checkpoint,
            device,
            drop_memory_modules=True,
        )
    if owned:
        check_model_writes_masks(args.model)
        generator = _make_generator(args, backend, device, max_new_tokens)
    if generator is not None:
        # The processor's own reading of the resolution bounds, so a processor that ignored them cannot go unseen.
        actual = generator.image_resolution()
        if actual != {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels}:
            raise UsageError(f"the image processor did not take the resolution bounds: it reports {actual}")
    settings_path.write_text(json.dumps(settings, indent=1))

    generated = 0
    gen_seconds = 0.0
    if num_todo:
        batch_size = args.batch_size or DEFAULT_BATCH_SIZE.get(backend, 8)
        progress = tqdm(total=num_todo, desc=f"eval {args.task}", disable=not args.progress)
        for split in splits:
            path = out_dir / f"predictions_{split}.jsonl"

            def write(records, path=path, split=split):
                with open(path, "a", encoding="utf-8") as f:  # one write per batch: a crash loses at most a batch
                    f.write("".join(json.dumps(r) + "\n" for r in records))
                done[split].update((r["id"], r) for r in records)
                progress.update(len(records))

            _, seconds = generate_records(args.task, todo[split], generator, mask_tokenizer, args.think, split,
                                          batch_size, write)  # fmt: skip
            gen_seconds += seconds
            generated += len(todo[split])
        progress.close()
    if owned:
        generator.close()

    if args.task == "gcg" and text_similarity is None:
        text_similarity = BertTextSimilarity(args.text_encoder, device=device)
    split_metrics = {}
    for split in splits:
        records = [done[split][x.id] for x in samples_by_split[split]]  # dataset order, whatever the write order
        split_metrics[split] = score_split(args.task, records, rows_by_split[split], text_similarity)
        if args.task == "gcg":
            write_glamm_predictions(records, out_dir / "glamm_predictions" / split)

    result = {
        "settings": settings,
        "splits": split_metrics,
        "run": {
            "generated": generated,
            "resumed": resumed,
            "samples": sum(len(v) for v in samples_by_split.values()),
            "generation_seconds": round(gen_seconds, 3),
            "total_seconds": round(time.perf_counter() - start, 3),
        },
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=1, default=_json_default))
    return result


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_model_writes_masks(model: str) -> None:
    """A model whose tokenizer lacks the mask tokens cannot write a mask: its "scores" would be the no-target rows'."""
    check_local_path(model, "model")
    missing = missing_mask_tokens(AutoTokenizer.from_pretrained(resolve_model_path(model)))
    if missing:
        raise UsageError(
            f"model {model!r} has no SAMTok mask tokens ({len(missing)} of 514 missing, first {missing[0]!r}): it "
            "cannot write masks; evaluate a SAMTok checkpoint"
        )


def _make_generator(args, backend: str, device: str, max_new_tokens: int):
    model = resolve_model_path(args.model)
    if backend == "vllm":
        return VLLMGenerator(
            model,
            max_new_tokens,
            args.min_pixels,
            args.max_pixels,
            args.seed,
            args.max_model_len,
            args.gpu_memory_utilization,
            args.tensor_parallel_size,
        )
    return HFGenerator(model, device, max_new_tokens, args.min_pixels, args.max_pixels)


def format_results(result: dict) -> str:
    """The paper-style table of a `metrics.json` (GRES: gIoU / cIoU / N-acc per split + avg; GCG: Table 1's columns)."""
    task = result["settings"]["task"]
    splits = result["splits"]
    columns = GRES_COLUMNS if task == "gres" else GCG_COLUMNS
    table = format_table(splits, columns, average=task == "gres" and len(splits) > 1)
    s, run = result["settings"], result["run"]
    rows, paper_columns = with_paper(splits, s["model"], task, columns)
    known = paper_numbers(s["model"], task) is not None
    lines = [
        table,
        "",
        "beside the SAMTok paper ("
        + ("Table 3" if task == "gres" else "Table 1")
        + "; "
        + ("its row for this model)" if known else "no published numbers for this model: paper columns empty)"),
        format_table(rows, paper_columns),
        "",
        f"model={s['model']} backend={s['backend']} think={s['think']} max_new_tokens={s['max_new_tokens']} "
        f"max_pixels={s['max_pixels']} seed={s['seed']}",
        f"samples={run['samples']} generated={run['generated']} resumed={run['resumed']}",
    ]
    for split, m in splits.items():
        lines.append(f"{split} parse: " + ", ".join(f"{k}={v}" for k, v in m["parse"].items()))
    return "\n".join(lines)


@dataclass
class EvalConfig:
    """What `samtok-rl eval` evaluates and how (flags or the keys of `--config FILE.yaml`)."""

    model: str = field(
        metadata={"help": "VLM folder or Hub id (e.g. zhouyik/Qwen2.5-VL-3B-SAMTok-gres-rl), or tiny:qwen2_5_vl."}
    )
    task: str = field(metadata={"help": "gres or gcg", "choices": list(TASKS)})
    output_dir: str = field(metadata={"help": "Predictions and metrics.json (resumable)."})
    data: str | None = field(
        default=None,
        metadata={
            "help": "gRefCOCO folder (grefs(unc).json), GranD-f folder, a `samtok-rl prepare` folder or an authors' "
            "RL parquet file (the last two: their rows of `task`, their own questions; `images` = a parquet file's "
            "image_root; one split name labels the predictions)."
        },
    )
    sample: bool = field(default=False, metadata={"help": "Evaluate on the bundled real-photo sample."})
    images: str | None = field(default=None, metadata={"help": "Image folder (default: found from data)."})
    split: str = field(default="val", metadata={"help": "Comma-separated: gres val,testA,testB; gcg val,test."})
    limit: int | None = field(default=None, metadata={"help": "First N samples per split."})
    think: bool = field(
        default=True, metadata={"help": "R1 think/answer prompt of the RL models (--no_think for SFT models)."}
    )
    template: str | None = field(
        default=None, metadata={"help": "GRES template with {expression}, or the whole GCG question."}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Default: GRES 1024 / 128, GCG 2048 / 512 (think / no think)."}
    )
    min_pixels: int = field(default=DEFAULT_MIN_PIXELS, metadata={"help": "Qwen image resolution floor (recorded)."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "Qwen image resolution cap (recorded)."})
    backend: str = field(
        default="auto",
        metadata={"help": "auto (vLLM on CUDA when installed), vllm or hf", "choices": ["auto", "vllm", "hf"]},
    )
    batch_size: int | None = field(default=None, metadata={"help": "Samples per generation call (hf 8, vllm 512)."})
    seed: int = field(default=0, metadata={"help": "Seed (greedy decoding; recorded)."})
    device: str | None = field(default=None, metadata={"help": "Default: this process's CUDA device, else cpu."})
    max_model_len: int = field(default=8192, metadata={"help": "vLLM context length."})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM share of the GPU memory."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor-parallel size."})
    mask_tokenizer: str | None = field(
        default=None,
        metadata={"help": "micro, a SAMTok folder, checkpoint file or Hub id; default: the model's own tokenizer."},
    )
    sam2_config: str | None = field(
        default=None, metadata={"help": "sam2 YAML of the mask tokenizer (with checkpoint)."}
    )
    checkpoint: str | None = field(default=None, metadata={"help": "Mask tokenizer weights, .pth or .safetensors."})
    text_encoder: str = field(default="bert-base-uncased", metadata={"help": "BERT folder or Hub id for GCG Recall."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress: don't)."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise UsageError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.sample == (self.data is not None):
            raise UsageError(f"give exactly one of data and sample (got data={self.data!r}, sample={self.sample})")
        if self.checkpoint is not None or self.sam2_config is not None:
            check_mask_tokenizer_source(self.mask_tokenizer, self.sam2_config, self.checkpoint)
        check_template(self.task, self.template)
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"limit must be >= 1 (the first N samples of each split), got {self.limit}")

    @property
    def mask_tokenizer_source(self) -> str:
        """What the mask tokenizer is built from (the model's own folder or Hub id unless named)."""
        return self.mask_tokenizer or self.model


def make_parser():
    """The `samtok-rl eval` parser (`--config FILE.yaml` and the fields of [`EvalConfig`])."""
    return config_parser([EvalConfig], prog="samtok-rl eval", description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> dict:
    """Run `samtok-rl eval` (also `python -m samtok_rl.evaluate`): predictions, `metrics.json` and the table."""
    (config,) = make_parser().parse_args_and_config(args=None if argv is None else list(argv))
    setup_logging()
    result = evaluate(config)
    print(format_results(result))
    print(f"wrote {Path(config.output_dir) / METRICS_FILE}")
    return result


if __name__ == "__main__":
    sys.exit(report_errors("eval", main))
