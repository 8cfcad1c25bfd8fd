"""The eval runner: `samtok-rl eval` end to end on the bundled sample (tiny VLM, micro mask tokenizer, CPU), resume,
and the parse -> decode -> metrics path checked against a direct computation with hand-written predictions."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import golden_a_dir
from PIL import Image

from samtok_rl import evaluate as ev
from samtok_rl.cli import main as cli_main
from samtok_rl.data import read_grandf_gcg_gt, read_grefcoco, sample_paths
from samtok_rl.masks import decode_rle
from samtok_rl.metrics import gcg_metrics, gres_metrics
from samtok_rl.parsing import OBJ_REF_END, OBJ_REF_START, gcg_caption
from samtok_rl.tokens import format_mask


GOLDEN = golden_a_dir()
GOLDEN_FILES = (GOLDEN / "sam2_micro.yaml", GOLDEN / "state_dict.safetensors")


def _mask_tokenizer_args() -> list[str]:
    """Golden A's real (micro) weights when present, else the seeded random micro tokenizer."""
    if all(p.is_file() for p in GOLDEN_FILES):
        return ["--sam2_config", str(GOLDEN_FILES[0]), "--checkpoint", str(GOLDEN_FILES[1])]
    return ["--mask_tokenizer", "micro"]


@pytest.fixture(scope="module")
def mask_tokenizer():
    """One tokenizer for the hand-written tests, so its image-feature cache is shared (the sample's val images)."""
    from samtok_rl.mask_tokenizer import MaskTokenizer, build_micro_mask_tokenizer

    if all(p.is_file() for p in GOLDEN_FILES):
        return MaskTokenizer.from_files(*GOLDEN_FILES, drop_memory_modules=True)
    return build_micro_mask_tokenizer(seed=0)


@pytest.fixture(scope="module")
def tiny_vlm():
    from samtok_rl.tiny import build_tiny_vlm

    return build_tiny_vlm("qwen2_5_vl")


# ----------------------------------------------------------------------------------------------------------- parsing

SPAN = format_mask(1, 2)


def test_gres_span_cap_only_with_think():
    text = "<think>t</think><answer>" + SPAN * 11 + "</answer>"
    capped = ev.parse_gres(text, think=True)
    assert capped["codes"] == [[1, 2]] and capped["num_spans"] == 11 and capped["capped"]
    assert len(ev.parse_gres(SPAN * 11, think=False)["codes"]) == 11
    assert len(ev.parse_gres("<answer>" + SPAN * 10 + "</answer>", think=True)["codes"]) == 10


def test_gres_reads_only_the_answer_part():
    text = f"<think>maybe {format_mask(9, 9)}</think><answer>{SPAN}</answer>"
    assert ev.parse_gres(text, think=True)["codes"] == [[1, 2]]
    out = ev.parse_gres("No target.", think=True)
    assert out["codes"] == [] and not out["found_answer"]


def test_gcg_pairing_reports_mismatches():
    text = (
        f"<think>x</think><answer>{SPAN} A {OBJ_REF_START} cat {OBJ_REF_END} {SPAN}{format_mask(3, 4)} on "
        f"{OBJ_REF_START} a mat {OBJ_REF_END}.</answer>"
    )
    out = ev.parse_gcg_output(text, think=True)
    assert out["caption"] == "A cat on a mat ."  # tags removed, whitespace collapsed (the reference rule)
    assert out["phrases"] == ["cat", "a mat"]
    assert out["codes"] == [[1, 2], None]
    assert (out["num_spans"], out["phrases_without_span"], out["spans_without_phrase"]) == (3, 1, 2)


def test_clean_output_strips_qwen3_think_and_eos():
    assert (
        ev.clean_output("<think>\n\n</think>\n\n<answer>a</answer><|im_end|>", ["<|im_end|>"]) == "<answer>a</answer>"
    )


# -------------------------------------------------------------------------------------------------- end to end


def paper_table(printed: str) -> dict[str, list[str]]:
    """The cells of the eval output's table beside the paper, by split."""
    lines = printed.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("beside the SAMTok paper")) + 2
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()[1:]
    return rows


def test_cli_end_to_end_then_resume(tiny_vlm, tmp_path, capsys):
    out = tmp_path / "gres"
    argv = ["eval", "--task", "gres", "--sample", "--split", "train,val", "--limit", "3", "--model", str(tiny_vlm),
            "--output_dir", str(out), "--max_new_tokens", "12", "--max_pixels", "12544", "--no_progress",
            *_mask_tokenizer_args()]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "gIoU" in printed and "N-acc" in printed and "avg" in printed and "generated=6" in printed
    # The paper's columns are there, empty: the tiny model is not a released checkpoint.
    assert "no published numbers for this model: paper columns empty" in printed
    assert all(cells[1::3] == cells[2::3] == ["-"] * 3 for cells in paper_table(printed).values())

    jsonls = [out / "predictions_train.jsonl", out / "predictions_val.jsonl"]
    for path in jsonls:
        lines = path.read_text().splitlines()
        assert len(lines) == 3
        assert {"id", "text", "answer", "codes", "masks", "size"} <= set(json.loads(lines[0]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["generated"] == 6 and metrics["run"]["resumed"] == 0
    assert metrics["settings"]["max_pixels"] == 12544 and metrics["settings"]["max_new_tokens"] == 12
    val = metrics["splits"]["val"]
    assert val["num_samples"] == 3 and val["num_no_target"] == 1  # the third val sentence has no target
    assert {"gIoU", "cIoU", "N_acc", "parse"} <= set(val)

    # Resume: everything is done, so nothing is generated and the predictions are untouched.
    before = [p.read_bytes() for p in jsonls]
    assert cli_main(argv) == 0
    assert [p.read_bytes() for p in jsonls] == before
    again = json.loads((out / "metrics.json").read_text())
    assert again["run"]["generated"] == 0 and again["run"]["resumed"] == 6
    assert json.dumps(again["splits"]) == json.dumps(metrics["splits"])

    # Different generation settings on the same folder are refused, not mixed in.
    capsys.readouterr()
    assert cli_main([a if a != "12" else "13" for a in argv]) == 2  # one line on stderr, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds predictions made with other settings (max_new_tokens)" in err


def test_cli_gcg_end_to_end(tiny_vlm, tmp_path, no_java):
    out = tmp_path / "gcg"
    argv = ["eval", "--task", "gcg", "--sample", "--model", str(tiny_vlm), "--output_dir", str(out),
            "--max_new_tokens", "8", "--max_pixels", "12544", "--limit", "1", "--no_progress",
            *_mask_tokenizer_args()]  # fmt: skip
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["generated"] == 1
    assert {"METEOR", "CIDEr", "AP50", "mIoU", "Recall", "parse"} <= set(metrics["splits"]["val"])
    assert (out / "glamm_predictions" / "val").is_dir()


# --------------------------------------------------------------------- hand-written predictions with the GT codes


class ReplayGenerator:
    """Answers each question+image with a fixed text (hand-written predictions instead of a model)."""

    def __init__(self, answers: dict[str, str], min_pixels: int, max_pixels: int):
        self.answers, self.resolution = answers, {"min_pixels": min_pixels, "max_pixels": max_pixels}
        self.calls = 0

    def image_resolution(self):
        return self.resolution

    def strip_tokens(self):
        return ["<|im_end|>"]

    def generate(self, questions, images):
        self.calls += len(questions)
        return [self.answers[q] + "<|im_end|>" for q in questions]


def _args(task: str, out: Path, extra=()):
    (config,) = ev.make_parser().parse_args_and_config(
        ["--task", task, "--model", "replay", "--output_dir", str(out), "--sample", "--no_progress",
         "--split", "val", *_mask_tokenizer_args(), *extra]
    )  # fmt: skip
    return config


def test_gres_hand_written_predictions_match_direct_metrics(tmp_path, mask_tokenizer):
    tok = mask_tokenizer
    p = sample_paths()
    rows = {s: list(read_grefcoco(p.grefcoco_refs, p.grefcoco_instances, p.images, splits=s)) for s in ("val",)}
    answers, expected = {}, {}
    for split, split_rows in rows.items():
        preds, gts = [], []
        for row in split_rows:
            image = np.asarray(Image.open(row["image"]).convert("RGB"))
            gt = np.stack([decode_rle(r) for r in row["gt_masks"]]) if row["gt_masks"] else None
            codes = tok.encode(image, gt) if gt is not None else np.zeros((0, 2), np.int64)
            spans = ", ".join(f'{{"mask_2d": "{format_mask(*c)}", "label": "x"}}' for c in codes.tolist())
            body = f"```json\n[{spans}]\n```" if len(codes) else "No target."
            question = ev.gres_question(row["expression"], think=True)
            assert question not in answers  # the sample's expressions are unique
            answers[question] = f"<think>looking</think><answer>{body}</answer>"
            pred = tok.decode(image, codes).any(axis=0) if len(codes) else np.zeros(image.shape[:2], bool)
            preds.append(pred)
            gts.append(gt.any(axis=0) if gt is not None else np.zeros(image.shape[:2], bool))
        expected[split] = gres_metrics(preds, gts)

    gen = ReplayGenerator(answers, ev.DEFAULT_MIN_PIXELS, ev.DEFAULT_MAX_PIXELS)
    result = ev.evaluate(_args("gres", tmp_path), generator=gen, mask_tokenizer=tok)
    assert gen.calls == 4 and result["run"]["generated"] == 4
    for split in ("val",):
        got = dict(result["splits"][split])
        parse = got.pop("parse")
        assert got == pytest.approx(expected[split], nan_ok=True)
        assert parse["no_answer_tag"] == 0 and parse["empty_predictions"] == expected[split]["num_no_target"]
    # The decoded masks are the tokenizer's reconstruction of the GT; a real tokenizer would be near 100 here.
    assert result["splits"]["val"]["N_acc"] == 100.0


def test_gcg_hand_written_predictions_match_direct_metrics(tmp_path, no_java, mask_tokenizer):
    tok = mask_tokenizer
    p = sample_paths()
    rows = list(read_grandf_gcg_gt(p.grandf_val_caption, p.grandf_val_mask, p.images))
    answers, preds, refs = {}, [], []
    question = ev.gcg_question(think=True)
    assert len(rows) == 2
    for k, row in enumerate(rows):
        image = np.asarray(Image.open(row["image"]).convert("RGB"))
        gt = np.stack([decode_rle(r) for r in row["gt_masks"]])
        codes = tok.encode(image, gt).tolist()
        # Image 0 loses the span of its last phrase: scored with an empty mask, counted as a mismatch.
        drop = len(codes) - 1 if k == 0 else None
        parts = [f"{OBJ_REF_START} {ph} {OBJ_REF_END}" + ("" if j == drop else f" {format_mask(*c)}")
                 for j, (ph, c) in enumerate(zip(row["phrases"], codes))]  # fmt: skip
        answer = "In this photo " + " and ".join(parts) + "."
        answers[(question, row["image"])] = f"<think>t</think><answer>{answer}</answer>"
        decoded = tok.decode(image, np.array(codes))
        masks = [np.zeros(image.shape[:2], bool) if j == drop else decoded[j] for j in range(len(codes))]
        caption = gcg_caption(answer)
        preds.append({"caption": caption, "phrases": list(row["phrases"]), "masks": masks})
        refs.append({"caption": row["caption"], "labels": row["phrases"], "masks": row["gt_masks"],
                     "image_id": row["image_id"]})  # fmt: skip
    same = lambda labels, phrases: np.ones((len(labels), len(phrases)))  # noqa: E731  (stands in for BERT)
    expected = gcg_metrics(preds, refs, text_similarity=same)

    class ByImage(ReplayGenerator):  # one question for every image: answer by image content
        def generate(self, questions, images):
            by_size = {Image.open(r["image"]).size: r["image"] for r in rows}
            return [self.answers[(q, by_size[im.size])] for q, im in zip(questions, images)]

    gen = ByImage(answers, ev.DEFAULT_MIN_PIXELS, ev.DEFAULT_MAX_PIXELS)
    result = ev.evaluate(_args("gcg", tmp_path), generator=gen, text_similarity=same, mask_tokenizer=tok)
    got = dict(result["splits"]["val"])
    parse = got.pop("parse")
    assert got == pytest.approx(expected, nan_ok=True)
    assert parse["phrases_without_span"] == 1 and parse["spans_without_phrase"] == 0
    assert parse["samples_with_mismatch"] == 1 and parse["phrases"] == sum(len(r["phrases"]) for r in rows)
    saved = json.loads((tmp_path / "glamm_predictions" / "val" / f"{rows[0]['image_id']}.json").read_text())
    assert saved["phrases"] == list(rows[0]["phrases"]) and len(saved["pred_masks"]) == len(rows[0]["phrases"])


def test_eval_table_puts_the_papers_numbers_beside_a_released_checkpoint(tmp_path):
    """A folder named as the release (how a downloaded checkpoint sits on disk) gets Table 3's row and the gap."""
    splits = {"val": {"gIoU": 79.0, "cIoU": 74.2, "N_acc": float("nan"), "parse": {}},
              "testB": {"gIoU": 70.3, "cIoU": 69.8, "N_acc": 72.5, "parse": {}}}  # fmt: skip
    result = {"settings": {"task": "gres", "model": str(tmp_path / "Qwen2.5-VL-3B-SAMTok-gres-rl"), "backend": "hf",
                           "think": True, "max_new_tokens": 8, "max_pixels": 1, "seed": 0},
              "splits": splits, "run": {"samples": 2, "generated": 2, "resumed": 0}}  # fmt: skip
    text = ev.format_results(result)
    assert "Table 3; its row for this model" in text
    table = paper_table(text)  # per split: ours, paper, diff for each metric
    assert table["val"] == ["79.00", "79.40", "-0.40", "74.20", "73.70", "0.50", "-", "81.50", "-"]
    assert table["testB"] == ["70.30", "71.30", "-1.00", "69.80", "69.80", "0.00", "72.50", "72.00", "0.50"]


def test_eval_reads_a_16_bit_image_by_value(tmp_path, mask_tokenizer):
    """The generator gets a 16-bit grey photo as 8-bit RGB scaled by value (value / 257), not clipped white."""
    import shutil

    root = tmp_path / "sample"
    shutil.copytree(sample_paths().root, root)
    horse = root / "images" / "horse.jpg"
    grey16 = np.asarray(Image.open(horse).convert("L")).astype(np.uint16) * 241  # 0..61,455
    Image.fromarray(grey16).save(horse, format="PNG")  # the file keeps its name: PIL reads the content
    seen = []

    class Recording(ReplayGenerator):
        def generate(self, questions, images):
            seen.extend(np.asarray(image) for image in images)
            return ["<think>t</think><answer>No target.</answer>"] * len(questions)

    (config,) = ev.make_parser().parse_args_and_config(
        ["--task", "gres", "--model", "replay", "--output_dir", str(tmp_path / "out"), "--data", str(root),
         "--split", "val", "--no_progress", *_mask_tokenizer_args()]
    )  # fmt: skip
    generator = Recording({}, ev.DEFAULT_MIN_PIXELS, ev.DEFAULT_MAX_PIXELS)
    ev.evaluate(config, generator=generator, mask_tokenizer=mask_tokenizer)
    expected = np.repeat(((grey16.astype(np.int64) + 128) // 257).astype(np.uint8)[..., None], 3, axis=2)
    assert len(seen) == 4 and sum(np.array_equal(image, expected) for image in seen) == 1  # the val split's horse
