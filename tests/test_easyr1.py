"""The authors' RL parquet files (EasyR1 schema) as a dataset source: conversion, summary, faults, training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from samtok_rl import grpo, prepare
from samtok_rl.data import DataError, sample_paths
from samtok_rl.data.easyr1 import format_prompt, read_easyr1
from samtok_rl.data.easyr1_synthetic import (
    AUTHORS_IMAGE_DIR,
    gcg_like,
    gres8k_like,
    write_easyr1_parquet,
)
from samtok_rl.errors import UsageError
from samtok_rl.masks import decode_rle
from samtok_rl.parsing import NO_TARGET, parse_masks
from samtok_rl.prompts import R1_SUFFIX


ROOT = Path(__file__).resolve().parents[1]
IMAGES = sample_paths().images


@pytest.fixture(scope="module")
def micro():
    from samtok_rl.mask_tokenizer import build_mask_tokenizer

    return build_mask_tokenizer("micro", device="cpu")


@pytest.fixture(scope="module")
def gres8k_50(micro, tmp_path_factory) -> Path:
    """50 rows in gres8k_train.parquet's proportions, image paths pointing at the authors' machine."""
    return write_easyr1_parquet(gres8k_like(50, micro), tmp_path_factory.mktemp("easyr1") / "gres8k_like.parquet")


def convert(path, out, *args):
    return prepare.main(["--parquet", str(path), "--output_dir", str(out), "--mask_tokenizer", "micro",
                         "--no_progress", *args])  # fmt: skip


def test_gres8k_like_conversion_summary_and_rows(gres8k_50, tmp_path, capsys):
    rows = convert(gres8k_50, tmp_path / "out", "--image_root", str(IMAGES))
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())["summary"]
    # 56% no-target (28 of 50, as 4,666 of 8,337); 8 of the 22 rows with masks hold two (as 1,301 of 3,671).
    assert (summary["rows"], summary["kept"], summary["skipped"]) == (50, 50, 0)
    assert (summary["no_target"], summary["no_target_share"]) == (28, 0.56)
    assert (summary["masks"], summary["rows_with_several_masks"]) == (30, 8)
    assert summary["images"] == {"distinct": 6, "embedded": 0, "from_image_root": 6, "missing_rows": 0}
    assert re.search(r"^all\s+50\s+28\s+56\.0%\s+30\s+8$", printed, re.MULTILINE), printed
    assert "images: 6 distinct (0 embedded, 6 resolved in image_root), 0 rows with a missing image" in printed

    source = pq.read_table(gres8k_50).to_pylist()
    assert len(rows) == 50
    for row, raw in zip(rows, source):
        assert row["solution"] == raw["answer"] and row["task"] == "gres"
        assert row["no_target"] == (raw["answer"] == NO_TARGET)
        assert [tuple(c) for c in row["gt_codes"]] == parse_masks(raw["answer"])
        assert row["gt_masks"] == (raw["masks"] or [])
        assert Path(row["image"]) == IMAGES / Path(raw["images"][0]["path"]).name
        # GRES: the default r1v format prompt, the image where the problem said <image>.
        assert row["prompt"][0]["content"][0]["type"] == "image"
        assert row["prompt"][0]["content"][1]["text"] == f"{raw['problem'].removeprefix('<image>')} {R1_SUFFIX}"
        assert row["expression"] in raw["problem"]


def test_variants_embedded_bytes_list_problem_ver_and_gcg(micro, tmp_path):
    # The mixes' schema: embedded bytes, `problem` a one-element list.
    gres = [dict(r, problem=[r["problem"]]) for r in gres8k_like(3, micro, embed=True, image_marker=False)]
    ver = dict(gres[0], source="ver", problem=["Please segment the thing left of the cup in this image."])
    gcg = dict(gcg_like(1, micro)[0], problem=["Describe the image in detail. "])
    path = write_easyr1_parquet([*gres, ver, gcg], tmp_path / "mix.parquet")
    rows = convert(path, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())["summary"]
    assert summary["tasks"] == {"gres": 4, "gcg": 1}
    assert set(summary["by_source"]) == {"gres", "ver", "grandf_gcg"}
    written = sorted((tmp_path / "out" / "images").iterdir())
    # Every embedded image is written once, named by its content; rows sharing bytes share the file.
    assert summary["images"]["embedded"] == len(written) and summary["images"]["from_image_root"] == 0
    assert rows[3]["image"] == rows[0]["image"]
    for row, raw in zip(rows, [*gres, ver]):
        assert Path(row["image"]).read_bytes() == raw["images"][0]["bytes"]
    assert rows[3]["task"] == "gres" and rows[3]["expression"] == "the thing left of the cup"
    gcg = rows[4]
    # GCG: the problem as is (non_thinking.jinja, trimmed), the phrases read from the answer.
    assert gcg["task"] == "gcg" and gcg["prompt"][0]["content"][1]["text"] == "Describe the image in detail."
    assert gcg["phrases"] and len(gcg["phrases"]) == len(gcg["gt_codes"]) == len(gcg["gt_masks"])
    assert R1_SUFFIX not in json.dumps(gcg["prompt"]) and R1_SUFFIX in json.dumps(rows[0]["prompt"])


def test_format_prompt_places_the_image_as_easyr1_does():
    assert format_prompt("  Look <image> here ", think=False) == [
        {"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "image"}, {"type": "text", "text": " here"}]}
    ]  # fmt: skip


SPAN = "<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>"
FAULTS = {
    "missing image": (lambda r: dict(r, images=[{"bytes": None, "path": f"{AUTHORS_IMAGE_DIR}/gone.jpg"}]),
                      r"field images\[0\]\.path: '.*gone\.jpg' not found as .*gone\.jpg"),
    "more spans than masks": (lambda r: dict(r, answer=f"{r['answer']} {SPAN}"),
                              r"field masks: 1 masks for the 2 mask spans of the answer"),
    "malformed span": (lambda r: dict(r, answer="<|mt_start|><|mt_0001|><|mt_end|>"),
                       r"field answer: 1 mask spans, 0 of them well formed"),
    "no target with a mask": (lambda r: dict(r, answer=NO_TARGET), r"field masks: 1 masks for the 0 mask spans"),
    "unknown source": (lambda r: dict(r, source="vqa"), r"field source: 'vqa' is neither a GRES"),
    "two problems": (lambda r: dict(r, problem=["a", "b"]), r"field problem: expected a string or a one-string list"),
    "mask of another size": (lambda r: dict(r, masks=[{"size": [3, 3], "counts": "9"}]),
                             r"field masks\[0\]: RLE size \[3, 3\] does not match the image size"),
}  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_a_malformed_row_is_named_before_anything_is_written(fault, micro, tmp_path):
    change, message = FAULTS[fault]
    records = gres8k_like(6, micro)
    if fault == "two problems":  # a column holds one type: the mixes' one-element lists
        records = [dict(r, problem=[r["problem"]]) for r in records]
    bad = next(i for i, r in enumerate(records) if r["masks"] and len(r["masks"]) == 1)
    records[bad] = change(dict(records[bad]))
    path = write_easyr1_parquet(records, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}, row {bad}, {message}"):
        convert(path, tmp_path / "out", "--image_root", str(IMAGES))
    assert not (tmp_path / "out").exists()


def test_skip_invalid_counts_a_missing_image(micro, tmp_path):
    records = gres8k_like(6, micro)
    records[2] = dict(records[2], images=[{"bytes": None, "path": "/elsewhere/gone.jpg"}])
    path = write_easyr1_parquet(records, tmp_path / "gone.parquet")
    rows = convert(path, tmp_path / "out", "--image_root", str(IMAGES), "--skip_invalid")
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())["summary"]
    assert (len(rows), summary["kept"], summary["skipped"], summary["images"]["missing_rows"]) == (5, 5, 1, 1)


def test_a_file_without_the_schema_or_images_is_refused(micro, tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(write_easyr1_parquet(gres8k_like(2, micro), path)).drop(["masks"]), path)
    with pytest.raises(DataError, match=r"column\(s\) \['masks'\] missing"):
        read_easyr1(path, IMAGES)
    ok = write_easyr1_parquet(gres8k_like(2, micro), tmp_path / "ok.parquet")
    with pytest.raises(DataError, match=r"row 0, field images\[0\]\.path: .* set image_root"):
        read_easyr1(ok)


def test_conversion_resumes_and_refuses_other_settings(gres8k_50, tmp_path):
    out = tmp_path / "out"
    first = convert(gres8k_50, out, "--image_root", str(IMAGES), "--shard_size", "16")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4
    (out / manifest["shards"]["1"]["file"]).unlink()  # an interrupted run: shard 1 is redone, the others kept
    kept = (out / manifest["shards"]["2"]["file"]).stat().st_mtime_ns
    again = convert(gres8k_50, out, "--image_root", str(IMAGES), "--shard_size", "16")
    assert again.to_list() == first.to_list()
    assert (out / manifest["shards"]["2"]["file"]).stat().st_mtime_ns == kept
    with pytest.raises(UsageError, match="prepared from other inputs or settings"):
        convert(gres8k_50, out, "--image_root", str(IMAGES), "--shard_size", "16", "--format_prompt", "none")


def test_prepare_options_that_do_not_apply_to_parquet_are_refused(gres8k_50, tmp_path):
    with pytest.raises(UsageError, match=r"\['num_images'\] apply to raw gRefCOCO"):
        convert(gres8k_50, tmp_path / "a", "--num_images", "3")
    with pytest.raises(UsageError, match="set format_prompt to none"):
        convert(gres8k_50, tmp_path / "b", "--no_think")
    with pytest.raises(UsageError, match="image_root is for parquet files"):
        prepare.main(["--task", "gres", "--sample", "--image_root", str(IMAGES), "--output_dir", str(tmp_path / "c"),
                      "--mask_tokenizer", "micro"])  # fmt: skip


def test_no_target_share_from_raw_grefcoco(tmp_path):
    source = prepare.read_source("gres", sample=True)
    empty_images = len({img for img, nt in zip(source["image"], source["no_target"]) if nt})
    picked = prepare.select_with_no_target_share(source["image"], source["no_target"], 4, 0.5, seed=1)
    assert sum(source["no_target"][i] for i in picked) == 2
    assert len({source["image"][i] for i in picked}) == 4  # one row per image
    with pytest.raises(UsageError, match=f"needs {empty_images + 1} images with a no-target expression; the source "
                                         f"has {empty_images}"):  # fmt: skip
        prepare.select_with_no_target_share(source["image"], source["no_target"], 6, (empty_images + 1) / 6)
    rows = prepare.main(["--task", "gres", "--sample", "--num_images", "4", "--no_target_share", "0.5",
                         "--mask_tokenizer", "micro", "--output_dir", str(tmp_path / "p"), "--no_progress"])  # fmt: skip
    assert sum(rows["no_target"]) == 2 and len(rows) == 4


def test_two_grpo_steps_on_the_authors_file_with_the_gres_recipe(gres8k_50, tmp_path, tiny_models, monkeypatch):
    """The authors' GRES recipe, shrunk to the tiny model, trains 2 steps straight from the parquet file."""
    monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
    recipe = ROOT / "recipes" / "gres" / "qwen2_5_vl_3b_authors_gres8k.yaml"
    config = yaml.safe_load(recipe.read_text())
    assert config["dataset"].endswith("gres8k_train.parquet") and config["reward_preset"] == "gres"
    trainer = grpo.main([
        "--config", str(recipe), "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", str(gres8k_50),
        "--image_root", str(IMAGES), "--output_dir", str(tmp_path / "run"), "--use_cpu", "--use_vllm", "false",
        "--bf16", "false", "--dtype", "float32", "--gradient_checkpointing", "false", "--report_to", "none",
        "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--max_completion_length", "8",
        "--save_strategy", "no", "--log_completions", "false",
    ])  # fmt: skip
    assert trainer.state.global_step == 2
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"rewards/gres_mask_reward/mean", "rewards/format_reward/mean", "reward"} <= logged
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts
    # The rows trained on are the file's: its prompts (with the r1v suffix) and its reference answers.
    answers = set(pq.read_table(gres8k_50, columns=["answer"]).column("answer").to_pylist())
    assert all(r["solution"] in answers and R1_SUFFIX in r["prompt"] for r in rollouts)


def test_eval_on_the_authors_file_scores_its_own_answers_perfectly(authors_files, micro, tmp_path, monkeypatch):
    """`samtok-rl eval --data FILE.parquet`: each row asks its own question; replaying the file's answers through the
    tokenizer that coded them gives the decoded GT masks back, so every metric is perfect."""
    from samtok_rl import evaluate as ev

    monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
    table = pq.read_table(authors_files["gres"]).to_pylist()
    answers = {f"{r['problem'].removeprefix('<image>')} {R1_SUFFIX}": r["answer"] for r in table}

    class Replay:
        calls = 0

        def image_resolution(self):
            return {"min_pixels": ev.DEFAULT_MIN_PIXELS, "max_pixels": ev.DEFAULT_MAX_PIXELS}

        def strip_tokens(self):
            return []

        def generate(self, questions, images):
            self.calls += len(questions)
            return [f"<think>t</think><answer>{answers[q]}</answer>" for q in questions]

    def args(*extra):
        (config,) = ev.make_parser().parse_args_and_config(
            ["--task", "gres", "--model", "replay", "--data", authors_files["gres"], "--images", str(IMAGES),
             "--split", "train", "--output_dir", str(tmp_path / "eval"), "--no_progress", "--mask_tokenizer", "micro",
             *extra]
        )  # fmt: skip
        return config

    replay = Replay()
    result = ev.evaluate(args(), generator=replay, mask_tokenizer=micro)
    metrics = result["splits"]["train"]
    # The metric's no-target rows are those whose GT is empty: the 28 "No target." rows, and any whose decoded mask
    # is (the random micro tokenizer decodes some codes to nothing).
    empty = sum(not r["masks"] or not any(decode_rle(m).any() for m in r["masks"]) for r in table)
    assert replay.calls == 50 and metrics["num_no_target"] == empty >= 28
    assert metrics["gIoU"] == 100.0 and metrics["N_acc"] == 100.0
    with pytest.raises(UsageError, match="questions ask for <think>/<answer> while think is False: set --think true"):
        ev.evaluate(args("--no_think"), generator=replay, mask_tokenizer=micro)
    with pytest.raises(UsageError, match="give one split name"):
        ev.evaluate(args("--split", "a,b"), generator=replay, mask_tokenizer=micro)
