"""Fault injection: every wrong input, file or re-run a user met fails at start-up in one line naming the culprit, or
does the right thing. One test per trial; each asserts the outcome (message, exit status, nothing overwritten).

The reward trials (more completions than solutions, a missing solution, a plug-in returning strings) are in
`test_rewards.py`; the looping completions in `test_parsing.py` / `test_rewards_fuzz.py`; resume across an epoch
boundary in `test_grpo.py`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from samtok_rl import cli, evaluate, grpo, prepare
from samtok_rl.errors import UsageError
from samtok_rl.mask_tokenizer import build_mask_tokenizer
from samtok_rl.prompts import R1_SUFFIX
from samtok_rl.tiny import build_tiny_processor, build_tiny_vlm


ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
    "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
    "--logging_steps", "1", "--seed", "0", "--max_train_samples", "4", "--model_name_or_path", "tiny:qwen2_5_vl",
]  # fmt: skip


def dry(tmp_path, dataset, *args):
    return grpo.main([*TRAIN, "--dry_run", "--output_dir", str(tmp_path / "run"), "--dataset", dataset, *args])


def one_line_error(capsys, argv) -> str:
    """Run `samtok-rl <argv>`: exit status 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def copy_prepared(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_shard(folder: Path, edit) -> Path:
    shard = sorted((folder / "data").glob("*.parquet"))[0]
    pq.write_table(edit(pq.read_table(shard)), shard)
    return shard


# -- the silent ones ---------------------------------------------------------------------------------------------------


def test_prepared_dataset_without_a_solution_column(tmp_path, datasets_dir):
    folder = copy_prepared(datasets_dir["gres"], tmp_path / "data")
    shard = rewrite_shard(folder, lambda t: t.drop(["solution"]))
    with pytest.raises(UsageError, match=rf"{shard}: column\(s\) \['solution'\] missing"):
        dry(tmp_path, str(folder), "--reward_preset", "gres")


def test_prepared_dataset_with_an_empty_solution(tmp_path, datasets_dir):
    folder = copy_prepared(datasets_dir["gres"], tmp_path / "data")

    def null_row_2(table):
        values = table.column("solution").to_pylist()
        values[2] = None
        return table.set_column(table.schema.get_field_index("solution"), "solution", pa.array(values, pa.string()))

    shard = rewrite_shard(folder, null_row_2)
    with pytest.raises(UsageError, match=rf"{shard}, row 2: `solution` is empty"):
        dry(tmp_path, str(folder), "--reward_preset", "gres")


@pytest.mark.parametrize(("data", "preset"), [("gcg", "gres"), ("gres", "gcg")])
def test_a_task_dataset_with_the_other_tasks_preset(tmp_path, datasets_dir, data, preset):
    with pytest.raises(UsageError, match=rf"scores {preset} rows but the dataset holds only \['{data}'\] rows"):
        dry(tmp_path, datasets_dir[data], "--reward_preset", preset)


def test_think_answer_rewards_on_a_bare_prompt_are_refused(tmp_path, datasets_dir):
    """A bare prompt (prepared with --no_think) gets a bare answer, which the GRES preset scores 0 unless it is
    `No target.`: GRPO would learn to say "No target." everywhere without a word. Row 3 alone lost the instruction."""
    folder = copy_prepared(datasets_dir["gres"], tmp_path / "data")

    def bare_row_3(table):
        prompts = table.column("prompt").to_pylist()
        for block in prompts[3][0]["content"]:
            if block.get("text"):
                block["text"] = block["text"].replace(R1_SUFFIX, "").strip()
        return table.set_column(table.schema.get_field_index("prompt"), "prompt",
                                pa.array(prompts, table.schema.field("prompt").type))  # fmt: skip

    rewrite_shard(folder, bare_row_3)
    with pytest.raises(
        UsageError, match=r"dataset row 3: the prompt does not ask for <think>/<answer>.*'gres_mask_reward'"
    ):
        dry(tmp_path, str(folder), "--reward_preset", "gres")
    # A reward that reads the bare response (a plug-in) is not refused.
    assert (
        dry(tmp_path, str(folder), "--reward_funcs", "rewards.examples.length_penalty.length_penalty_reward") is None
    )


def test_the_same_training_command_twice_is_refused_and_overwrites_nothing(tmp_path, datasets_dir):
    argv = [*TRAIN, "--output_dir", str(tmp_path / "run"), "--dataset", datasets_dir["gres"], "--reward_preset",
            "gres", "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
    grpo.main(argv)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(
        UsageError,
        match=r"holds checkpoints \(last: checkpoint-1\), a trained model, logs \(.*\) of an earlier run: continue it",
    ):
        grpo.main(argv)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("remove", "message"),
    [("config.json", "has no config.json"), ("optimizer.pt", r"has no optimizer state \(optimizer.pt\)")],
)
def test_resume_from_an_incomplete_checkpoint(tmp_path, datasets_dir, remove, message):
    argv = [*TRAIN, "--output_dir", str(tmp_path / "run"), "--dataset", datasets_dir["gres"], "--reward_preset",
            "gres", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
    grpo.main([*argv, "--max_steps", "1"])
    checkpoint = tmp_path / "run" / "checkpoint-1"
    (checkpoint / remove).unlink()
    with pytest.raises(UsageError, match=message):
        grpo.main([*argv, "--max_steps", "2", "--resume_from_checkpoint", str(checkpoint), "--dry_run"])


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [("beta", "-0.5", ">= 0"), ("learning_rate", "-1", "> 0"), ("temperature", "0", "> 0"),
     ("max_completion_length", "0", "> 0")],
)  # fmt: skip
def test_meaningless_training_values(tmp_path, datasets_dir, flag, value, rule):
    with pytest.raises(UsageError, match=rf"{flag} must be {rule}, got"):
        dry(tmp_path, datasets_dir["gres"], "--reward_preset", "gres", f"--{flag}", value)


def test_eval_of_a_model_without_mask_tokens(tmp_path, capsys):
    processor = build_tiny_processor("qwen2_5_vl")  # a base model: no mask tokens
    base = tmp_path / "base"
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(build_tiny_vlm()).save_pretrained(base)
    processor.save_pretrained(base)
    err = one_line_error(capsys, ["eval", "--task", "gres", "--sample", "--model", str(base), "--mask_tokenizer",
                                  "micro", "--output_dir", str(tmp_path / "eval"), "--no_progress"])  # fmt: skip
    assert "has no SAMTok mask tokens (514 of 514 missing" in err
    assert not list((tmp_path / "eval").glob("predictions_*.jsonl"))


@pytest.mark.parametrize("command", ["prepare", "eval"])
def test_a_gres_template_without_the_expression(tmp_path, capsys, command):
    argv = [command, "--task", "gres", "--sample", "--mask_tokenizer", "micro", "--output_dir", str(tmp_path / "o"),
            "--template", "Please segment it."]  # fmt: skip
    if command == "eval":
        argv += ["--model", "tiny:qwen2_5_vl"]
    assert "has no {expression}" in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--split", "trian"], r"no usable row for split\(s\) \['trian'\] \(the file has splits \['train', 'val'\]"),
     (["--num_images", "0"], "num_images must be >= 1, got 0")],
)  # fmt: skip
def test_prepare_selecting_nothing(tmp_path, capsys, args, message):
    err = one_line_error(capsys, ["prepare", "--task", "gres", "--sample", "--mask_tokenizer", "micro",
                                  "--output_dir", str(tmp_path / "o"), *args])  # fmt: skip
    assert __import__("re").search(message, err), err


def test_prepare_with_skip_invalid_dropping_every_row(tmp_path, capsys):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"ref_id": 1, "image_id": 99, "split": "train", "ann_id": [-1],
                                 "sentences": [{"sent": "x", "sent_id": 1}]}]))  # fmt: skip
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "annotations": []}))
    err = one_line_error(capsys, ["prepare", "--task", "gres", "--refs", str(refs), "--instances", str(instances),
                                  "--images", str(tmp_path), "--skip_invalid", "--mask_tokenizer", "micro",
                                  "--output_dir", str(tmp_path / "o")])  # fmt: skip
    assert f"{refs}: no usable row" in err and "1 rows skipped as invalid" in err


def test_eval_of_a_split_the_data_lacks(tmp_path, capsys):
    err = one_line_error(capsys, ["eval", "--task", "gres", "--sample", "--split", "testZ", "--model",
                                  "tiny:qwen2_5_vl", "--mask_tokenizer", "micro", "--output_dir", str(tmp_path)])  # fmt: skip
    assert "no usable row for split(s) ['testZ']" in err


# -- the confusing ones ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--mask_tokenizer", "micro", "--use_cpu",
       "--model_name_or_path", "./no/such/model", "--dry_run"], "model_name_or_path './no/such/model' does not exist"),
     (["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--use_cpu", "--model_name_or_path",
       "tiny:qwen2_5_vl", "--mask_tokenizer", "/no/such/tokenizer.pth", "--dry_run"],
      "mask_tokenizer '/no/such/tokenizer.pth' does not exist"),
     (["eval", "--task", "gres", "--sample", "--model", "./no/model", "--mask_tokenizer", "micro"],
      "model './no/model' does not exist")],
)  # fmt: skip
def test_a_missing_local_path_is_named_at_once_not_sent_to_the_hub(tmp_path, capsys, argv, message):
    argv = [*argv, "--output_dir", str(tmp_path / "o")]
    assert message in one_line_error(capsys, argv)


def test_resume_from_a_missing_checkpoint_folder(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--mask_tokenizer",
                                  "micro", "--use_cpu", "--model_name_or_path", "tiny:qwen2_5_vl", "--output_dir",
                                  str(tmp_path), "--resume_from_checkpoint", "./runs/checkpoint-9", "--dry_run"])  # fmt: skip
    assert "resume_from_checkpoint './runs/checkpoint-9' is not a folder" in err


def test_resume_true_without_a_checkpoint(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--mask_tokenizer",
                                  "micro", "--use_cpu", "--model_name_or_path", "tiny:qwen2_5_vl", "--output_dir",
                                  str(tmp_path), "--resume_from_checkpoint", "true", "--dry_run"])  # fmt: skip
    assert "resume_from_checkpoint true: output_dir" in err and "holds no complete checkpoint-N folder" in err


def test_eval_builds_the_mask_tokenizer_before_the_generator(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(evaluate, "_make_generator", lambda *a: started.append(a))
    config = evaluate.EvalConfig(model="tiny:qwen2_5_vl", task="gres", sample=True, output_dir=str(tmp_path),
                                 mask_tokenizer=str(tmp_path / "missing"), progress=False)  # fmt: skip
    with pytest.raises(UsageError):
        evaluate.evaluate(config)
    assert started == []


def _sample_copy(tmp_path: Path) -> tuple[Path, Path, Path]:
    from samtok_rl.data import sample_paths

    paths = sample_paths()
    images = tmp_path / "images"
    shutil.copytree(paths.images, images)
    return paths.grefcoco_refs, paths.grefcoco_instances, images


def test_a_truncated_jpeg_is_named_and_skipped_with_skip_invalid(tmp_path, capsys):
    refs, instances, images = _sample_copy(tmp_path)
    victim = images / "chelsea.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # the header (and size) is intact, the pixels are not
    argv = ["prepare", "--task", "gres", "--refs", str(refs), "--instances", str(instances), "--images", str(images),
            "--mask_tokenizer", "micro", "--device", "cpu", "--no_progress"]  # fmt: skip
    err = one_line_error(capsys, [*argv, "--output_dir", str(tmp_path / "strict")])
    assert f"{victim}: the image does not decode" in err
    assert cli.main([*argv, "--output_dir", str(tmp_path / "lenient"), "--skip_invalid"]) == 0
    kept = prepare.load_prepared(tmp_path / "lenient")
    assert len(kept) > 0 and str(victim) not in set(kept["image"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda i: {"annotations": i["annotations"]}, "expected a COCO instances object with a list under 'images'"),
     (lambda i: [1, 2, 3], "expected a COCO instances object with a list under 'images'"),
     (lambda i: {**i, "annotations": [{**a, "segmentation": [["x", "y", "z", "w", "v", "u"]]}
                                      for a in i["annotations"]]}, "segmentation polygon #0 is not a list of numbers")],
)  # fmt: skip
def test_malformed_instances_json_names_file_and_row(tmp_path, capsys, edit, message):
    refs, instances, images = _sample_copy(tmp_path)
    broken = tmp_path / "instances.json"
    broken.write_text(json.dumps(edit(json.loads(instances.read_text()))))
    err = one_line_error(capsys, ["prepare", "--task", "gres", "--refs", str(refs), "--instances", str(broken),
                                  "--images", str(images), "--mask_tokenizer", "micro", "--output_dir",
                                  str(tmp_path / "o")])  # fmt: skip
    assert message in err and str(broken) in err


def test_a_damaged_shard_is_prepared_again_on_rerun(tmp_path):
    config = prepare.PrepareConfig(task="gres", output_dir=str(tmp_path / "o"), sample=True, split="val",
                                   mask_tokenizer="micro", device="cpu", progress=False, shard_size=2)  # fmt: skip
    first = prepare.run(config)
    shard = sorted((tmp_path / "o" / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # damaged after it was written
    with pytest.raises(UsageError, match=f"{shard}: unreadable shard"):
        prepare.load_prepared(tmp_path / "o")
    again = prepare.run(config)
    assert again.to_list() == first.to_list()


def test_a_folder_of_parquet_files_without_manifest_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "o" / "mine.parquet")
    err = one_line_error(capsys, ["prepare", "--task", "gres", "--sample", "--mask_tokenizer", "micro",
                                  "--output_dir", str(tmp_path / "o")])  # fmt: skip
    assert "holds parquet files but no manifest.json" in err
    assert pq.read_table(tmp_path / "o" / "mine.parquet").to_pylist() == [{"x": 1}]


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "not a readable checkpoint"), (b"\x80\x02garbage", "not a readable checkpoint")]
)
def test_an_empty_or_truncated_checkpoint(tmp_path, content, message):
    checkpoint = tmp_path / "mask_tokenizer_256x2.pth"
    checkpoint.write_bytes(content)
    with pytest.raises(UsageError, match=f"{checkpoint}: {message}"):
        build_mask_tokenizer(sam2_config="sam2_micro.yaml", checkpoint=checkpoint, device="cpu")


def test_a_bad_sam2_yaml(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match=f"sam2 config '{config}' does not build a SAM 2 model"):
        build_mask_tokenizer(sam2_config=config, checkpoint=tmp_path / "w.pth", device="cpu")


def test_a_nan_mask_is_refused_not_encoded_as_the_full_image():
    tokenizer = build_mask_tokenizer("micro", device="cpu")
    image = np.zeros((32, 48, 3), np.uint8)
    masks = np.zeros((2, 32, 48), np.float32)
    masks[0, 4:10, 4:10] = 1
    masks[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="mask 1 holds NaN or infinite values"):
        tokenizer.encode(image, masks)


def test_a_rewards_py_in_the_working_directory(tmp_path):
    (tmp_path / "rewards.py").write_text("x = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "samtok_rl.cli", "train", "--dataset", "sample:gres", "--reward_preset", "gres",
         "--mask_tokenizer", "micro", "--use_cpu", "--model_name_or_path", "tiny:qwen2_5_vl", "--output_dir",
         str(tmp_path / "o"), "--dry_run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{tmp_path / 'rewards.py'} shadows samtok-rl's `rewards` package" in proc.stderr


@pytest.mark.parametrize("damage", ["blank lines", "corrupt middle line"])
def test_eval_resumes_over_a_damaged_predictions_file(tmp_path, damage):
    config = evaluate.EvalConfig(model="tiny:qwen2_5_vl", task="gres", sample=True, split="val", limit=3,
                                 mask_tokenizer="micro", output_dir=str(tmp_path), max_new_tokens=4,
                                 max_pixels=12544, progress=False)  # fmt: skip
    first = evaluate.evaluate(config)
    path = tmp_path / "predictions_val.jsonl"
    lines = path.read_text().splitlines()
    if damage == "blank lines":
        path.write_text("\n".join(lines[:1] + ["", "  "] + lines[1:]) + "\n\n")
    else:
        path.write_text("\n".join([lines[0], '{"id": "torn', *lines[1:]]) + "\n")
    again = evaluate.evaluate(config)
    assert again["splits"] == first["splits"]
    assert again["run"]["generated"] == 0 and again["run"]["resumed"] == 3
    if damage == "corrupt middle line":
        assert (tmp_path / "predictions_val.jsonl.rejected").read_text() == '{"id": "torn\n'


def test_cli_errors_keep_the_traceback_with_debug(tmp_path):
    with pytest.raises(UsageError, match="num_images must be >= 1"):
        cli.main(["prepare", "--task", "gres", "--sample", "--mask_tokenizer", "micro", "--num_images", "0",
                  "--output_dir", str(tmp_path), "--debug"])  # fmt: skip


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(config):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(prepare, "run", broken)
    with pytest.raises(KeyError):
        cli.main(["prepare", "--task", "gres", "--sample", "--mask_tokenizer", "micro", "--output_dir", str(tmp_path)])


def test_an_unreadable_image_in_a_reader_is_named(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "y.jpg").write_bytes(b"not an image")
    from samtok_rl.data._common import ImageSizes

    with pytest.raises(UsageError, match=r"row 3: cannot read image .*y.jpg"):
        ImageSizes()(tmp_path / "y.jpg", "row 3")


def test_python_m_entry_points_report_errors_in_one_line_too(tmp_path):
    """`accelerate launch -m samtok_rl.grpo` and `make demo` (`python -m samtok_rl.demo`) do not go through the
    `samtok-rl` dispatcher: their own entry points print the same one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "samtok_rl.grpo", "--dataset", "sample:gres", "--reward_preset", "gres",
         "--mask_tokenizer", "micro", "--use_cpu", "--model_name_or_path", "tiny:qwen2_5_vl", "--output_dir",
         str(tmp_path), "--beta", "-1", "--dry_run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "samtok-rl train: error: beta must be >= 0, got -1.0"


def nan_reward(prompts, completions, **kwargs) -> list[float]:
    return [float("nan")] * len(completions)


def inf_reward(prompts, completions, **kwargs) -> list[float]:
    return [float("inf")] * len(completions)


def none_half_reward(prompts, completions, **kwargs) -> list[float | None]:
    return [None if i % 2 else 0.5 for i in range(len(completions))]


def huge_half_reward(prompts, completions, **kwargs) -> list[float]:
    return [1e30 if i % 2 else 0.5 for i in range(len(completions))]


def test_a_nan_reward_weight_is_refused_before_training(tmp_path, datasets_dir):
    with pytest.raises(UsageError, match=r"reward_weights: nan for gres_mask_reward: weights must be finite numbers"):
        dry(tmp_path, datasets_dir["gres"], "--reward_preset", "gres", "--reward_weights", "1", "nan", "1", "1")
    with pytest.raises(UsageError, match=r"reward_weights: inf for .*: weights must be finite numbers"):
        dry(tmp_path, datasets_dir["gres"], "--reward_preset", "gres", "--reward_weights", "1", "1", "inf", "1")


@pytest.mark.parametrize(
    ("reward", "shown"), [("nan_reward", "nan"), ("inf_reward", "inf"), ("huge_half_reward", "1e+30")]
)
def test_a_reward_returning_nan_inf_or_a_huge_value_stops_training(tmp_path, datasets_dir, reward, shown):
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
            "--reward_funcs", f"{Path(__file__).resolve()}:{reward}", "--max_steps", "2"]  # fmt: skip
    with pytest.raises(
        UsageError, match=rf"reward {reward} returned {re.escape(shown)} for completion \d+: rewards must be finite"
    ):
        grpo.main(argv)
    assert not (out / "metrics.jsonl").exists()  # stopped in the first step, before anything was logged


def test_a_reward_returning_none_for_other_rows_still_trains(tmp_path, datasets_dir):
    """`None` (not applicable, e.g. rows of another task) is the allowed way to leave a reward out."""
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
            "--reward_funcs", f"{Path(__file__).resolve()}:none_half_reward", "--max_steps", "1"]  # fmt: skip
    assert grpo.main(argv).state.global_step == 1


# -- output folders, mask-tokenizer files, model folders, limits: refused before any work ------------------------------


def _prepare_argv(out, *args) -> list[str]:
    return ["prepare", "--task", "gres", "--sample", "--split", "val", "--device", "cpu", "--no_progress",
            "--output_dir", str(out), *args]  # fmt: skip


def _eval_argv(out, *args, model="tiny:qwen2_5_vl") -> list[str]:
    return ["eval", "--task", "gres", "--sample", "--model", model, "--device", "cpu", "--no_progress",
            "--output_dir", str(out), *args]  # fmt: skip


def _train_argv(out, *args) -> list[str]:
    return ["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--use_cpu", "--model_name_or_path",
            "tiny:qwen2_5_vl", "--output_dir", str(out), "--dry_run", *args]  # fmt: skip


@pytest.mark.parametrize("command", ["prepare", "eval"])
@pytest.mark.parametrize("under", [False, True])
def test_an_output_dir_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys, command, under):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    out = notes / "run" if under else notes
    argv = _prepare_argv if command == "prepare" else _eval_argv
    err = one_line_error(capsys, argv(out, "--mask_tokenizer", "micro"))
    if under:
        assert f"output_dir '{out}' lies under the file '{notes}', not in a folder" in err
    else:
        assert f"output_dir '{notes}' is a file, not a folder" in err
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize("command", ["prepare", "eval", "train"])
def test_a_mask_tokenizer_folder_without_its_weights(tmp_path, capsys, command):
    folder = tmp_path / "samtok"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a model folder, but no mask_tokenizer_256x2.pth
    argv = {"prepare": _prepare_argv, "eval": _eval_argv, "train": _train_argv}[command]
    err = one_line_error(capsys, argv(tmp_path / "o", "--mask_tokenizer", str(folder)))
    assert f"mask_tokenizer folder '{folder}' has no mask_tokenizer_256x2.pth" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_eval_of_a_model_folder_without_the_mask_tokenizer_names_the_model(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    err = one_line_error(capsys, _eval_argv(tmp_path / "o", model=str(model)))
    assert f"model folder '{model}' has no mask_tokenizer_256x2.pth" in err


@pytest.mark.parametrize("command", ["prepare", "eval", "train"])
@pytest.mark.parametrize("named", ["folder", "file"])
def test_an_empty_mask_tokenizer_checkpoint_is_refused_before_any_work(tmp_path, capsys, command, named):
    """A 0-byte checkpoint (an interrupted copy) passed `train --dry_run` and failed at the first decoded span."""
    folder = tmp_path / "samtok"
    folder.mkdir()
    weights = folder / "mask_tokenizer_256x2.pth"
    weights.write_bytes(b"")
    argv = {"prepare": _prepare_argv, "eval": _eval_argv, "train": _train_argv}[command]
    name = folder if named == "folder" else weights
    err = one_line_error(capsys, argv(tmp_path / "o", "--mask_tokenizer", str(name)))
    assert f"mask_tokenizer checkpoint '{weights}' is empty (0 bytes)" in err


def test_an_empty_checkpoint_of_a_sam2_config_pair_is_refused_at_once(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    err = one_line_error(capsys, _prepare_argv(tmp_path / "o", "--sam2_config", "sam2_micro.yaml", "--checkpoint",
                                               str(weights)))  # fmt: skip
    assert f"mask tokenizer checkpoint '{weights}' is empty (0 bytes)" in err


@pytest.fixture
def prepared_with(tmp_path, datasets_dir):
    """`prepared_with(name)`: the prepared GRES sample in a folder whose manifest records mask tokenizer `name`."""

    def make(name: str) -> Path:
        dataset = prepare.load_prepared(datasets_dir["gres"])
        return prepare.write_prepared(dataset, tmp_path / "data", "gres", {"tokenizer": name})

    return make


def _weights_folder(tmp_path, name: str, content: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "mask_tokenizer_256x2.pth").write_bytes(content)
    return folder


def test_training_with_another_mask_tokenizer_than_the_dataset_was_prepared_with(tmp_path, capsys, prepared_with):
    data = prepared_with("zhouyik/Qwen3-VL-8B-SAMTok")
    base = ["train", "--dataset", str(data), "--reward_preset", "gres", "--use_cpu", "--model_name_or_path",
            "tiny:qwen2_5_vl", "--output_dir", str(tmp_path / "o"), "--dry_run"]  # fmt: skip
    err = one_line_error(capsys, [*base, "--mask_tokenizer", "micro"])
    assert (
        f"mask_tokenizer 'micro' is not the one dataset '{data}' was prepared with ('zhouyik/Qwen3-VL-8B-SAMTok', "
        "recorded in its manifest.json)" in err
    )
    # Without a mask tokenizer in the recipe there is nothing to compare; the recorded name itself passes.
    assert cli.main(base) == 0
    assert (
        cli.main([*base, "--mask_tokenizer", "zhouyik/Qwen3-VL-8B-SAMTok", "--reward_funcs", "mask_iou_reward"]) == 0
    )


def test_a_mask_tokenizer_named_differently_but_the_same_file_is_accepted(tmp_path, capsys, prepared_with):
    """A folder and its checkpoint file, or two copies with the same bytes, are the same tokenizer; other bytes
    are not."""
    first = _weights_folder(tmp_path, "a", b"weights-1")
    data = prepared_with(str(first))
    base = ["train", "--dataset", str(data), "--reward_preset", "gres", "--use_cpu", "--model_name_or_path",
            "tiny:qwen2_5_vl", "--output_dir", str(tmp_path / "o"), "--dry_run", "--mask_tokenizer"]  # fmt: skip
    assert cli.main([*base, str(first / "mask_tokenizer_256x2.pth")]) == 0
    assert cli.main([*base, str(_weights_folder(tmp_path, "copy", b"weights-1"))]) == 0
    other = _weights_folder(tmp_path, "other", b"weights-2")
    assert f"mask_tokenizer '{other}' is not the one dataset" in one_line_error(capsys, [*base, str(other)])


def test_eval_of_a_model_folder_without_config_json(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text("{}")  # a tokenizer alone ended in a sentencepiece traceback
    err = one_line_error(capsys, _eval_argv(tmp_path / "o", "--mask_tokenizer", "micro", model=str(model)))
    assert f"model '{model}' is a folder without config.json: not a model checkpoint" in err


@pytest.mark.parametrize("limit", ["-2", "0"])
def test_eval_with_a_limit_below_one_names_the_flag(tmp_path, capsys, limit):
    err = one_line_error(capsys, _eval_argv(tmp_path / "o", "--mask_tokenizer", "micro", "--limit", limit))
    assert f"limit must be >= 1 (the first N samples of each split), got {limit}" in err


def test_inspect_leaves_out_a_rollout_record_without_prompt_index(tmp_path, caplog):
    """Such a line ended in a KeyError; it is now reported, with file and line, as inspect reports a torn line."""
    from samtok_rl.data import sample_paths

    run = tmp_path / "run"
    run.mkdir()
    (run / "samtok_run.json").write_text(json.dumps({"mask_tokenizer": "micro", "rewards": ["format_reward"]}))
    image = str(sample_paths().images / "horse.jpg")
    record = {"step": 1, "prompt_index": 0, "prompt": "q", "image": image, "task": "gres", "completion": "<answer>"
              "No target.</answer>", "codes": [], "rewards": {"format_reward": 1.0}, "reward": 1.0,
              "advantage": 0.0, "solution": "No target.", "gt_masks": []}  # fmt: skip
    stray = {k: v for k, v in record.items() if k != "prompt_index"}
    rollouts = run / "rollouts.jsonl"
    rollouts.write_text("".join(json.dumps(r) + "\n" for r in (record, stray, record)))
    assert cli.main(["inspect", str(run)]) == 0
    assert f"{rollouts}: line(s) 2 are not JSON records with 'prompt_index' and are left out" in caplog.text
    assert "step 1 · prompt 0" in (run / "report" / "index.html").read_text()  # the others are shown
    assert rollouts.read_text().count("\n") == 3  # the run's file is not changed


def test_the_iou_reward_decodes_at_most_span_cap_spans_of_a_flood():
    """1,000 distinct spans against one GT mask: only the first `span_cap(1)` = 16 are decoded (counted by the real
    micro tokenizer's decoder), the rest count as unmatched: score = best IoU of the first 16 / 1000."""
    from rewards.iou import get_mask_iou_reward, matched_iou_score, span_cap
    from samtok_rl.data import sample_paths
    from samtok_rl.masks import rle_from_mask
    from samtok_rl.tokens import format_mask

    tokenizer = build_mask_tokenizer("micro", device="cpu")
    image = np.asarray(Image.open(sample_paths().images / "horse.jpg").convert("RGB"))
    gt = np.zeros((1, *image.shape[:2]), dtype=bool)
    gt[0, 40:200, 60:300] = True
    codes = np.array([[k % 256, k // 256] for k in range(1000)], dtype=np.int64)  # all distinct
    text = "<think>t</think><answer>" + " ".join(format_mask(int(a), int(b)) for a, b in codes) + "</answer>"
    reward = get_mask_iou_reward(tokenizer)
    cap = span_cap(1)
    assert cap == 16

    before = tokenizer.decoder_passes
    (score,) = reward(None, [text], gt_masks=[[rle_from_mask(gt[0])]], image=[image])
    assert tokenizer.decoder_passes - before <= cap

    first = tokenizer.decode(image, codes[:cap])
    assert score == pytest.approx(matched_iou_score(first, gt) * cap / 1000)
    assert score == pytest.approx(matched_iou_score(first, gt, undecoded=1000 - cap))
    # At most `cap` spans: the capped score is the uncapped one.
    short = "<answer>" + " ".join(format_mask(int(a), int(b)) for a, b in codes[:cap]) + "</answer>"
    assert reward(None, [short], gt_masks=[[rle_from_mask(gt[0])]], image=[image]) == [
        pytest.approx(matched_iou_score(first, gt))
    ]
