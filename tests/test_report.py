"""`samtok-rl inspect`: the per-sample scores behind the eval report's order, the decoding of a run's rollouts, and the
pages in a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from samtok_rl import evaluate as ev
from samtok_rl.cli import main as cli_main
from samtok_rl.data import read_grandf_gcg_gt, read_grefcoco, sample_paths
from samtok_rl.errors import UsageError
from samtok_rl.inspector import InspectConfig, inspect_folder
from samtok_rl.masks import decode_rle
from samtok_rl.metrics import gcg_metrics, greedy_miou, greedy_pairs, gres_metrics, gres_sample
from samtok_rl.parsing import OBJ_REF_END, OBJ_REF_START, mask_spans, parse_masks
from samtok_rl.report.overlay import draw_masks
from samtok_rl.report.training import decode_groups, read_rollouts, select_steps
from samtok_rl.tokens import format_mask


# ------------------------------------------------------------------------------------ the per-sample pieces


def test_gres_samples_add_up_to_gres_metrics():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for k in range(40):
        gt = rng.random((9, 7)) < 0.3 if k % 4 else np.zeros((9, 7), bool)  # every 4th: no target
        pred = rng.random((9, 7)) < 0.3 if k % 3 else np.zeros((9, 7), bool)  # every 3rd: "no target"
        preds.append(pred)
        gts.append(gt)
    metrics = gres_metrics(preds, gts)
    samples = [gres_sample(p, g) for p, g in zip(preds, gts)]
    assert 100 * np.mean([s.iou for s in samples]) == pytest.approx(metrics["gIoU"])
    assert 100 * sum(s.inter for s in samples) / sum(s.union for s in samples) == pytest.approx(metrics["cIoU"])
    for outcome in ("TP", "FN", "FP", "TN"):
        assert sum(s.outcome == outcome for s in samples) == metrics[outcome]
    for p, g, s in zip(preds, gts, samples):  # each sample alone is a one-sample split
        assert 100 * s.iou == pytest.approx(gres_metrics([p], [g])["gIoU"])


def test_greedy_pairs_index_the_original_matrix_and_average_to_miou():
    rng = np.random.default_rng(1)
    for _ in range(50):
        ious = rng.random((rng.integers(0, 5), rng.integers(0, 5))) * (rng.random() < 0.9)
        pairs = greedy_pairs(ious)
        assert len({r for r, _, _ in pairs}) == len(pairs) == len({c for _, c, _ in pairs})
        assert all(ious[r, c] == iou > 0 for r, c, iou in pairs)
        assert greedy_miou(ious) == (pytest.approx(np.mean([i for *_, i in pairs])) if pairs else 0.0)


_PIECES = ["<|mt_start|>", "<|mt_end|>", "<|mt_0007|>", "<|mt_0300|>", "<|mt_0600|>", "<|mt_12|>", "a", " ", "}"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=20))
def test_mask_spans_read_what_parse_masks_reads(pieces):
    text = "".join(pieces)
    spans = mask_spans(text)
    assert [codes for _, _, codes in spans] == parse_masks(text)
    assert all(text.startswith("<|mt_start|>", start) and start < end for start, end, _ in spans)


def test_overlay_keeps_unmasked_pixels_and_tints_masked_ones():
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:20] = True
    out = draw_masks(image, [mask], [3])
    assert (out[~mask] == 100).all()
    assert (out[mask] != 100).any(axis=-1).all()
    with pytest.raises(ValueError, match="mask 0 has shape"):
        draw_masks(image, [mask[:10]])


def test_select_steps_spreads_over_the_run_within_the_cap():
    steps = list(range(1, 101))
    chosen = select_steps(steps, dict.fromkeys(steps, 4), 40)
    assert chosen[0] == 1 and chosen[-1] == 100 and len(chosen) == 10
    assert select_steps(steps, dict.fromkeys(steps, 4), 0) == steps


def test_a_resumed_steps_later_records_replace_the_earlier_ones(tmp_path):
    lines = [
        {"step": s, "prompt_index": 0, "run": run} for run, s in (("a", 1), ("a", 2), ("a", 3), ("b", 2), ("b", 3))
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "torn')
    steps = read_rollouts(path)
    assert {s: [r["run"] for r in records] for s, records in steps.items()} == {1: ["a"], 2: ["b"], 3: ["b"]}


# ------------------------------------------------------------------------- a training run's rollouts, decoded


@pytest.fixture(scope="module")
def micro():
    from samtok_rl.mask_tokenizer import build_micro_mask_tokenizer

    return build_micro_mask_tokenizer(seed=0)


def test_decode_groups_runs_the_image_encoder_once_per_image(micro):
    images = [str(p) for p in sorted(sample_paths().images.glob("*.jpg"))[:2]]
    groups = [
        [{"image": images[0], "codes": [[1, 2], [3, 4]], "gt_masks": []}, {"image": images[0], "codes": []},
         {"image": images[0], "codes": [[5, -1]]}],
        [{"image": images[1], "codes": [[7, 8]], "gt_masks": []}, {"image": images[1], "codes": [[7, 8], [7, 8]]}],
        [{"image": images[0], "codes": [[9, 9]], "gt_masks": []}],  # the first group's image again
    ]  # fmt: skip
    before = micro.encoder_passes
    out = decode_groups(groups, micro)
    assert micro.encoder_passes - before == 2
    for records, (image, real, masks) in zip(groups, out):
        assert real and image.shape == np.asarray(Image.open(records[0]["image"])).shape
        for record, decoded in zip(records, masks):
            expected = micro.decode(image, np.array(record["codes"]).reshape(-1, 2))
            assert len(decoded) == len(record["codes"]) and all((d == e).all() for d, e in zip(decoded, expected))


def test_inspect_refuses_what_is_not_a_run_or_eval(tmp_path):
    with pytest.raises(UsageError, match="neither a training run"):
        inspect_folder(InspectConfig(folder=str(tmp_path)))
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "mine.txt").write_text("not a report")
    with pytest.raises(UsageError, match="not a samtok-rl report"):
        inspect_folder(InspectConfig(folder=str(tmp_path)))
    assert (tmp_path / "report" / "mine.txt").is_file()  # never replaced


# -------------------------------------------------------- an eval folder of the bundled sample, worst first


class Replay:
    """Answers each question with a fixed text (predictions written by hand instead of a model)."""

    def __init__(self, answers):
        self.answers = answers

    def image_resolution(self):
        return {"min_pixels": ev.DEFAULT_MIN_PIXELS, "max_pixels": ev.DEFAULT_MAX_PIXELS}

    def strip_tokens(self):
        return []

    def generate(self, questions, images):
        return [
            self.answers[q] if q in self.answers else self.answers[(q, im.size)] for q, im in zip(questions, images)
        ]


def _eval_args(task: str, out: Path):
    (config,) = ev.make_parser().parse_args_and_config(
        ["--task", task, "--model", "replay", "--output_dir", str(out), "--sample", "--no_progress", "--split", "val",
         "--mask_tokenizer", "micro"]
    )  # fmt: skip
    return config


def _union(rles, size):
    return np.any([decode_rle(r) for r in rles], axis=0) if rles else np.zeros(size, bool)


def test_gres_eval_report_is_worst_first_by_the_metric(tmp_path, micro, browser):
    p = sample_paths()
    rows = list(read_grefcoco(p.grefcoco_refs, p.grefcoco_instances, p.images, splits="val"))
    answers = {}
    for k, row in enumerate(rows):
        image = np.asarray(Image.open(row["image"]).convert("RGB"))
        gt = np.stack([decode_rle(r) for r in row["gt_masks"]]) if row["gt_masks"] else None
        codes = micro.encode(image, gt).tolist() if gt is not None else [[k + 1, 2 * k + 1]]
        if k % 2:
            codes = codes + codes[:1]  # a duplicated span
        spans = ", ".join(f'{{"mask_2d": "{format_mask(*c)}"}}' for c in codes)
        body = "No target." if k == 0 and gt is not None else f"```json\n[{spans}]\n```"
        answers[ev.gres_question(row["expression"], think=True)] = f"<think>t</think><answer>{body}</answer>"
    out = tmp_path / "eval"
    metrics = ev.evaluate(_eval_args("gres", out), generator=Replay(answers), mask_tokenizer=micro)["splits"]["val"]

    summary = inspect_folder(InspectConfig(folder=str(out)))
    split = summary["splits"]["val"]
    # Independently: each sample's gIoU as a one-sample split, from the predictions file and the GT.
    preds = {r["id"]: r for r in map(json.loads, (out / "predictions_val.jsonl").read_text().splitlines())}
    samples, gt_rows = ev.load_split("gres", Path(sample_paths().root) / "grefcoco", "val", None, True, None)
    own = {}
    for s, row in zip(samples, gt_rows):
        size = tuple(preds[s.id]["size"])
        pred, gt = _union(preds[s.id]["masks"], size), _union(row["gt_masks"], size)
        own[s.id] = gres_metrics([pred], [gt])["gIoU"] / 100
    assert split["scores"] == pytest.approx([own[i] for i in split["order"]])
    assert split["scores"] == sorted(split["scores"]) and len(set(split["scores"])) > 1
    assert split["agree"] and split["recomputed"] == pytest.approx(metrics["gIoU"])

    check, console, dom, shot = browser(summary["index"])
    assert check["broken"] == [] and check["errors"] == [] and console == [], (check, console)
    assert check["images"] == 2 * len(rows)  # GT and prediction side by side
    ids_in_page = [dom.index(f"· {i} ·") for i in split["order"]]
    assert ids_in_page == sorted(ids_in_page)  # the page shows them in that order
    assert "false no-target" in dom and "duplicate spans" in dom  # the failure filters
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500


def test_gcg_eval_report_pairs_phrases_as_the_evaluator(tmp_path, micro, no_java):
    p = sample_paths()
    rows = list(read_grandf_gcg_gt(p.grandf_val_caption, p.grandf_val_mask, p.images))
    question = ev.gcg_question(think=True)
    answers = {}
    for k, row in enumerate(rows):
        image = np.asarray(Image.open(row["image"]).convert("RGB"))
        codes = micro.encode(image, np.stack([decode_rle(r) for r in row["gt_masks"]])).tolist()
        if k == 0:
            codes = codes[::-1]  # masks attached to the wrong phrases
        parts = [f"{OBJ_REF_START} {ph} {OBJ_REF_END} {format_mask(*c)}" for ph, c in zip(row["phrases"], codes)]
        answers[(question, Image.open(row["image"]).size)] = f"<think>t</think><answer>{' and '.join(parts)}.</answer>"
    same = lambda labels, phrases: np.ones((len(labels), len(phrases)))  # noqa: E731  (stands in for BERT)
    out = tmp_path / "eval"
    result = ev.evaluate(_eval_args("gcg", out), generator=Replay(answers), text_similarity=same, mask_tokenizer=micro)
    summary = inspect_folder(InspectConfig(folder=str(out)))["splits"]["val"]
    preds = {r["id"]: r for r in map(json.loads, (out / "predictions_val.jsonl").read_text().splitlines())}
    for row in rows:  # each image as a one-image split of the evaluator
        pred = preds[str(row["image_id"])]
        ref = {"caption": row["caption"], "labels": row["phrases"], "masks": row["gt_masks"]}
        one = gcg_metrics([{"caption": pred["caption"], "phrases": pred["phrases"], "masks": pred["masks"]}], [ref],
                          text_similarity=same, meteor=False)  # fmt: skip
        assert summary["scores"][summary["order"].index(str(row["image_id"]))] == pytest.approx(one["mIoU"] / 100)
    assert summary["scores"] == sorted(summary["scores"])
    assert summary["agree"] and summary["recomputed"] == pytest.approx(result["splits"]["val"]["mIoU"])


def test_inspect_command_on_a_tiny_model_eval(tmp_path, capsys):
    """`samtok-rl eval` with the tiny VLM on the bundled sample, then `samtok-rl inspect <folder>`."""
    from samtok_rl.tiny import build_tiny_vlm

    out = tmp_path / "eval"
    model = build_tiny_vlm("qwen2_5_vl")
    assert cli_main(["eval", "--task", "gres", "--sample", "--split", "val", "--model", str(model), "--mask_tokenizer",
                     "micro", "--output_dir", str(out), "--max_new_tokens", "16", "--max_pixels", "12544",
                     "--no_progress"]) == 0  # fmt: skip
    assert cli_main(["inspect", str(out), "--max_samples", "2"]) == 0
    printed = capsys.readouterr().out
    index = out / "report" / "index.html"
    assert f"report written to {index}" in printed
    page = index.read_text()
    assert page.count('class="card"') == 2 and "showing the worst 2 of 4" in page
    assert len(list((out / "report" / "img").glob("*.jpg"))) == 4


def test_the_browser_check_sees_missing_pictures_and_script_errors(tmp_path, browser):
    """The negative control of the page checks above: a broken picture and a script error are reported."""
    from samtok_rl.report.page import figure, page

    index = tmp_path / "index.html"
    index.write_text(page("t", "s", figure("img/missing.jpg", "x", "x") + "<script>notAFunction();</script>"))
    check, console, _, _ = browser(index)
    assert check["images"] == 1 and check["broken"] == ["img/missing.jpg"]
    assert any("notAFunction" in e for e in check["errors"]) and any("notAFunction" in line for line in console)


def test_eval_report_flags_predictions_changed_after_the_metrics_and_survives_torn_lines(tmp_path, micro, caplog):
    """Faults injected into a finished eval folder: a torn line is left out with a warning (the folder is not
    changed), a sample whose prediction is gone makes the page flag its metric, a missing image is drawn on grey."""
    p = sample_paths()
    rows = list(read_grefcoco(p.grefcoco_refs, p.grefcoco_instances, p.images, splits="val"))
    answers = {ev.gres_question(r["expression"], think=True): "<answer>No target.</answer>" for r in rows}
    out = tmp_path / "eval"
    ev.evaluate(_eval_args("gres", out), generator=Replay(answers), mask_tokenizer=micro)
    predictions = out / "predictions_val.jsonl"
    lines = predictions.read_text().splitlines()
    record = json.loads(lines[1])
    record["image"] = str(tmp_path / "gone.jpg")
    predictions.write_text("\n".join([json.dumps(record), *lines[2:], '{"id": "torn']) + "\n")  # line 0 dropped
    before = predictions.read_text()

    summary = inspect_folder(InspectConfig(folder=str(out)))["splits"]["val"]
    assert predictions.read_text() == before and not (out / "predictions_val.jsonl.rejected").exists()
    assert "are not prediction records and are left out" in caplog.text
    assert len(summary["order"]) == len(rows) - 1 and not summary["agree"]
    page = (out / "report" / "index.html").read_text()
    assert 'class="warn"' in page and "they differ" in page
    assert "image not found: grey canvas" in page
