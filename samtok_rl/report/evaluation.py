"""The report of an evaluation folder: the metrics table, then every sample worst first, GT beside prediction.

Reads what `samtok-rl eval` writes (`eval_settings.json`, `metrics.json`, `predictions_<split>.jsonl`) and the ground
truth from the data the settings name. Each sample is scored with the benchmark's own per-sample terms: GRES with
`metrics.gres_sample` (the IoU that gIoU averages, and ReLA's no-target outcome), GCG with the GLaMM evaluator's greedy
mask pairing (`metrics.greedy_pairs`, whose mean per image is its mIoU). The page states the split metric recomputed
from these beside `metrics.json`'s, so the order shown is the order the metric counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from samtok_rl.errors import UsageError
from samtok_rl.evaluate import METRICS_FILE, SETTINGS_FILE, load_split, read_jsonl
from samtok_rl.masks import coco_rle, decode_rle
from samtok_rl.metrics import GCG_COLUMNS, GRES_COLUMNS, greedy_pairs, gres_sample, iou_matrix, union_masks

from .overlay import colour_hex
from .page import esc, figure, kind_chips, legend, page, table
from .render import Pictures, code_colours, load_image, marked_text


__all__ = ["eval_report", "score_gcg_samples", "score_gres_samples"]

COVERED = 0.5  # a GT target less than half covered by the prediction counts as missed (GRES)
MATCHED = 0.5  # a GT phrase's mask without a predicted mask at IoU >= 0.5 counts as missed (GCG, as its Recall)

_KIND_LABELS = {
    "false-no-target": "false no-target (target answered with no mask)",
    "mask-on-no-target": "mask on a no-target sample",
    "missed-target": "missed target",
    "duplicates": "duplicate spans",
    "phrase-mismatch": "phrases and masks differ in number",
}
_OUTCOMES = {
    "TP": "no target, answered no target",
    "FN": "no target, answered with a mask",
    "FP": "target, answered no target",
    "TN": "target, answered with a mask",
}


def _duplicates(record: dict) -> bool:
    codes = [tuple(c) for c in record["codes"] if c is not None]
    return len(codes) != len(set(codes))


def score_gres_samples(records: list[dict], gt_rows: dict[str, dict]) -> list[dict]:
    """Per GRES sample: `score` (its gIoU term), ReLA's `outcome`, its GT row and the failure `kinds`."""
    scored = []
    for record in records:
        size = tuple(record["size"])
        gt = [decode_rle(r) for r in gt_rows[record["id"]]["gt_masks"]]
        pred = [decode_rle(r) for r in record["masks"]]
        pred_union = union_masks(pred, size)
        sample = gres_sample(pred_union, union_masks(gt, size), where=f"sample {record['id']}")
        kinds = set()
        if sample.outcome == "FP":
            kinds.add("false-no-target")
        if sample.outcome == "FN":
            kinds.add("mask-on-no-target")
        if sample.outcome == "TN" and any((g & pred_union).sum() < COVERED * g.sum() for g in gt):
            kinds.add("missed-target")
        if _duplicates(record):
            kinds.add("duplicates")
        # The masks are decoded again for the samples the page shows: a whole split's would not fit in memory.
        scored.append({"record": record, "score": sample.iou, "outcome": sample.outcome,
                       "gt_row": gt_rows[record["id"]], "kinds": kinds})  # fmt: skip
    return scored


def score_gcg_samples(records: list[dict], gt_rows: dict[str, dict]) -> list[dict]:
    """Per GCG image: `score` (its mIoU term), each predicted phrase's greedily matched GT phrase and IoU, `kinds`."""
    scored = []
    for record in records:
        row = gt_rows[record["id"]]
        pred_rles = [coco_rle(r) for r in record["masks"]]
        gt_rles = [coco_rle(r) for r in row["gt_masks"]]
        pairs = greedy_pairs(iou_matrix(pred_rles, gt_rles))  # (pred, gt, iou), the evaluator's mIoU pairing
        score = float(np.mean([iou for _, _, iou in pairs])) if pairs else 0.0
        kinds = set()
        if any(all(g != gi or iou < MATCHED for _, gi, iou in pairs) for g in range(len(gt_rles))):
            kinds.add("missed-target")
        if _duplicates(record):
            kinds.add("duplicates")
        if record.get("phrases_without_span") or record.get("spans_without_phrase"):
            kinds.add("phrase-mismatch")
        scored.append({"record": record, "score": score, "pairs": pairs, "gt_row": row, "kinds": kinds})
    return scored


def _masks(rles) -> list[np.ndarray]:
    return [decode_rle(r) for r in rles]


def _gres_card(rank: int, item: dict, pictures: Pictures) -> str:
    record = item["record"]
    gt, pred = _masks(item["gt_row"]["gt_masks"]), _masks(record["masks"])
    image, real = load_image(record["image"], record["size"])
    colours = code_colours([c for c in record["codes"] if c is not None])
    gt_src = pictures.save(image, gt)
    pred_src = pictures.save(image, pred, [colours[tuple(c)] for c in record["codes"] if c is not None])
    gt_caption = f"ground truth: {len(gt)} target(s)" if gt else "ground truth: no target"
    if not real:
        gt_caption += " (image not found: grey canvas)"
    pred_caption = f"prediction: {len(pred)} mask(s)" if pred else "prediction: no target"
    chips = kind_chips(item["kinds"], _KIND_LABELS)
    head = (f"<h3>#{rank} · IoU {item['score']:.3f} · {esc(_OUTCOMES[item['outcome']])} · {esc(record['id'])} · "
            f"&ldquo;{esc(record.get('expression', ''))}&rdquo;</h3>{chips}")  # fmt: skip
    gt_fig = figure(gt_src, esc(gt_caption) + "<br>" + legend([(colour_hex(k), f"GT {k + 1}") for k in
                                                               range(len(gt))]), "ground truth")  # fmt: skip
    pred_fig = figure(
        pred_src,
        esc(pred_caption) + "<br>" + legend([(colour_hex(c), f"{a}·{b}") for (a, b), c in colours.items()]),
        "prediction",
    )
    text = f'<div class="text" style="max-width:40em">{marked_text(record["text"], colours)}</div>'
    kinds = " ".join(sorted(item["kinds"]))
    return f'<div class="card" data-kinds="{kinds}">{head}<div class="row">{gt_fig}{pred_fig}{text}</div></div>'


def _gcg_card(rank: int, item: dict, pictures: Pictures) -> str:
    record, row = item["record"], item["gt_row"]
    gt, pred = _masks(row["gt_masks"]), _masks(record["masks"])
    image, real = load_image(record["image"], record["size"])
    # A matched predicted phrase takes its GT phrase's colour; the unmatched ones follow the GT colours.
    pred_colour = {p: g for p, g, _ in item["pairs"]}
    extra = iter(range(len(gt), len(gt) + len(pred)))
    pred_colours = [pred_colour[p] if p in pred_colour else next(extra) for p in range(len(pred))]
    gt_src = pictures.save(image, gt)
    pred_src = pictures.save(image, pred, pred_colours)
    matched = {p: (g, iou) for p, g, iou in item["pairs"]}
    rows = []
    for p, phrase in enumerate(record["phrases"]):
        g, iou = matched.get(p, (None, None))
        rows.append((phrase, row["phrases"][g] if g is not None else "-", iou))
    chips = kind_chips(item["kinds"], _KIND_LABELS)
    caption_note = "" if real else " (image not found: grey canvas)"
    head = f"<h3>#{rank} · mIoU {item['score']:.3f} · {esc(record['id'])}</h3>{chips}"
    gt_fig = figure(gt_src, esc("ground truth" + caption_note) + "<br>" + legend(
        [(colour_hex(k), p) for k, p in enumerate(row["phrases"])]), "ground truth")  # fmt: skip
    pred_fig = figure(pred_src, "prediction<br>" + legend(
        [(colour_hex(c), p) for c, p in zip(pred_colours, record["phrases"])]), "prediction")  # fmt: skip
    side = (
        f'<div style="max-width:40em">{table(("predicted phrase", "matched GT phrase", "IoU"), rows)}'
        f'<p class="note">GT caption: {esc(row["caption"])}</p>'
        f'<div class="text">{marked_text(record["text"], code_colours([c for c in record["codes"] if c]))}</div></div>'
    )
    kinds = " ".join(sorted(item["kinds"]))
    return f'<div class="card" data-kinds="{kinds}">{head}<div class="row">{gt_fig}{pred_fig}{side}</div></div>'


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def eval_report(eval_dir: Path, report_dir: Path, max_samples: int = 500) -> dict:
    """Write `report_dir/index.html` for the `samtok-rl eval` folder `eval_dir`; returns a summary.

    Args:
        eval_dir (`Path`): the eval `output_dir`.
        report_dir (`Path`): where the page and its pictures go.
        max_samples (`int`): most samples shown per split, the worst ones; 0 shows all.
    """
    settings_path, metrics_path = eval_dir / SETTINGS_FILE, eval_dir / METRICS_FILE
    if not settings_path.is_file() or not metrics_path.is_file():
        raise UsageError(f"{eval_dir} lacks {SETTINGS_FILE} or {METRICS_FILE}: not a finished samtok-rl eval folder")
    settings = json.loads(settings_path.read_text())
    result = json.loads(metrics_path.read_text())
    task = settings["task"]
    columns = GRES_COLUMNS if task == "gres" else GCG_COLUMNS
    body = ["<h2>Metrics</h2>"]
    body.append(
        table(["split", *columns], [[s, *(_fmt(m.get(c)) for c in columns)] for s, m in result["splits"].items()])
    )
    body.append(f'<p class="note">{esc(", ".join(f"{k}={v}" for k, v in settings.items()))}</p>')

    pictures = Pictures(report_dir)
    counts = dict.fromkeys(_KIND_LABELS, 0)
    summary = {"splits": {}}
    for split, metrics in result["splits"].items():
        samples, rows = load_split(task, Path(settings["data"]), split, settings["images"], settings["think"],
                                   settings["template"])  # fmt: skip
        gt_rows = {r["id"]: r for r in rows}
        first = {}
        for record in read_jsonl(eval_dir / f"predictions_{split}.jsonl", quarantine=False):
            first.setdefault(record["id"], record)  # the first record per id, as the eval's resume reads them
        records = [first[s.id] for s in samples if s.id in first]
        scored = (score_gres_samples if task == "gres" else score_gcg_samples)(records, gt_rows)
        # Worst first; ties in dataset order.
        order = sorted(range(len(scored)), key=lambda k: (scored[k]["score"], k))
        name, reported = ("gIoU", metrics.get("gIoU")) if task == "gres" else ("mIoU", metrics.get("mIoU"))
        recomputed = 100.0 * float(np.mean([x["score"] for x in scored])) if scored else float("nan")
        agree = reported is not None and len(records) == len(samples) and abs(recomputed - reported) < 1e-6
        check = f"{name} from the per-sample scores below: {recomputed:.4f}; {METRICS_FILE}: {_fmt(reported)}"
        body.append(f"<h2>{esc(split)}: {len(records)} samples, worst first</h2>")
        body.append(f'<p class="{"note" if agree else "warn"}">{esc(check)}'
                    + ("" if agree else " (they differ: predictions were added or changed after the metrics; "
                       "re-run `samtok-rl eval` on this folder)") + "</p>")  # fmt: skip
        shown = order if max_samples <= 0 else order[:max_samples]
        if len(shown) < len(order):
            body.append(f'<p class="note">showing the worst {len(shown)} of {len(order)} (`--max_samples 0` shows all)'
                        "</p>")  # fmt: skip
        card = _gres_card if task == "gres" else _gcg_card
        for rank, k in enumerate(shown, start=1):
            body.append(card(rank, scored[k], pictures))
            for kind in scored[k]["kinds"]:
                counts[kind] += 1
        summary["splits"][split] = {
            "order": [scored[k]["record"]["id"] for k in order],
            "scores": [scored[k]["score"] for k in order],
            "recomputed": recomputed,
            "reported": reported,
            "agree": agree,
        }
    filters = [(kind, label, counts[kind]) for kind, label in _KIND_LABELS.items() if counts[kind]]
    report_dir.mkdir(parents=True, exist_ok=True)
    index = report_dir / "index.html"
    subtitle = esc(f"{eval_dir} · task {task} · model {settings.get('model')}")
    index.write_text(page(f"samtok-rl eval: {eval_dir.name}", subtitle, "".join(body), filters))
    summary.update(index=index, pictures=pictures.count)
    return summary
