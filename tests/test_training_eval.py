"""The benchmark's metrics during training (`samtok_rl.training_eval`): the same numbers as `samtok-rl eval`, curves in
the logs and the report, best-model tracking, resume, and the one-line refusals of bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from samtok_rl import demo, grpo
from samtok_rl.errors import UsageError
from samtok_rl.evaluate import EvalConfig, evaluate
from samtok_rl.inspector import InspectConfig, inspect_folder
from samtok_rl.training_eval import LOGGED, eval_folder, shard_indices


EVAL = ["--eval_dataset", "sample:gres", "--eval_strategy", "steps", "--eval_on_start", "true",
        "--eval_max_new_tokens", "96"]  # fmt: skip


@pytest.fixture(scope="module")
def warm():
    # The demo's warm start (cached, shared with tests/test_demo.py and `make demo`): it answers with masks.
    return demo.warm_start_model(*grpo.parse_args(["--config", str(demo.DEMO_RECIPE)]), demo.WARM_START_STEPS,
                                 demo.WARM_START_LR)  # fmt: skip


def train(warm: Path, out: Path, *extra: str):
    argv = ["--config", str(demo.DEMO_RECIPE), "--model_name_or_path", str(warm), "--output_dir", str(out),
            "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", *EVAL, *extra]  # fmt: skip
    return grpo.main(argv)


def eval_entries(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e for e in lines if "eval/giou" in e]


def standalone_eval(model: Path, settings: dict, out: Path) -> dict:
    """`samtok-rl eval` of `model` on the split and with the settings an evaluation during training recorded."""
    return evaluate(EvalConfig(
        model=str(model), task="gres", data=settings["data"], split="val", mask_tokenizer="micro", output_dir=str(out),
        max_new_tokens=settings["max_new_tokens"], min_pixels=settings["min_pixels"],
        max_pixels=settings["max_pixels"], backend="hf", device="cpu", progress=False,
    ))  # fmt: skip


@pytest.fixture(scope="module")
def run(warm, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_run") / "run"
    trainer = train(warm, out)
    return out, trainer


def test_last_evaluation_equals_samtok_rl_eval_of_the_saved_model(run, tmp_path):
    out, trainer = run
    entries = eval_entries(out)
    assert [e["step"] for e in entries] == [0, 2, 4]  # step 0, every eval_steps, the end
    last = eval_folder(out, 4)
    settings = json.loads((last / "eval_settings.json").read_text())
    assert settings["backend"] == "hf (the trainer's model)" and settings["think"] is True
    result = standalone_eval(out, settings, tmp_path / "eval")
    standalone = result["splits"]["val"]
    in_training = json.loads((last / "metrics.json").read_text())["splits"]["val"]
    # Every metric and counter, exactly; and what was logged is what the folder holds.
    assert {k: in_training[k] for k in standalone} == standalone
    for key, name in LOGGED["gres"].items():
        assert entries[-1][f"eval/{name}"] == pytest.approx(standalone[key], abs=0, nan_ok=True)
    # The policy answers with masks: the metrics measure masks, not only no-target answers.
    assert standalone["TN"] > 0 and standalone["sum_I"] > 0
    ours = [json.loads(x) for x in (last / "predictions_val.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (tmp_path / "eval" / "predictions_val.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"], r["masks"]) for r in ours] == [(r["id"], r["text"], r["masks"]) for r in theirs]
    # The trainer's state carries the same numbers (what best-model tracking reads).
    logged = [e for e in trainer.state.log_history if "eval_giou" in e]
    assert [e["eval_giou"] for e in logged] == [e["eval/giou"] for e in entries]


def test_evaluations_show_in_the_report_and_open_in_inspect(run):
    out, _ = run
    summary = inspect_folder(InspectConfig(folder=str(out)))
    html = Path(summary["index"]).read_text()
    assert "eval split: benchmark metrics" in html  # the curve panel
    assert "eval/step-000004" in html and "Evaluations on the eval split" in html
    evaluation = inspect_folder(InspectConfig(folder=str(eval_folder(out, 2))))
    assert evaluation["splits"]["val"]["agree"]  # the folder's metrics recomputed from its predictions


def test_resume_continues_the_curve_without_repeat_or_skip(warm, run, tmp_path):
    out, _ = run
    part = tmp_path / "run"
    train(warm, part, "--max_steps", "2")
    train(warm, part, "--resume_from_checkpoint", str(part / "checkpoint-2"))
    entries = eval_entries(part)
    assert [e["step"] for e in entries] == [0, 2, 4]  # step 2 is not evaluated again on resume
    uninterrupted = eval_entries(out)
    assert [{k: v for k, v in e.items() if k != "eval/seconds"} for e in entries] == [
        {k: v for k, v in e.items() if k != "eval/seconds"} for e in uninterrupted
    ]


def test_resume_from_a_step_without_evaluation_adds_none(warm, run, tmp_path):
    """Resumed at step 3, which the schedule (every 2) does not evaluate: `eval_on_start` adds no point there."""
    out, _ = run
    resumed = tmp_path / "resumed"
    train(warm, resumed, "--save_steps", "1", "--resume_from_checkpoint", str(_checkpoint_3(warm, tmp_path)))
    assert [e["step"] for e in eval_entries(resumed)] == [4]
    assert not eval_folder(resumed, 3).exists()
    want = {k: v for k, v in eval_entries(out)[-1].items() if k != "eval/seconds"}
    assert {k: v for k, v in eval_entries(resumed)[-1].items() if k != "eval/seconds"} == want


def _checkpoint_3(warm, tmp_path) -> Path:
    """Checkpoint 3 of a 4-step run that evaluates every 2 steps: its log holds no evaluation at step 3."""
    first = tmp_path / "first"
    train(warm, first, "--save_steps", "1")
    state = json.loads((first / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_giou" in e] == [0, 2]
    return first / "checkpoint-3"


def test_best_checkpoint_by_eval_metric_is_restored(warm, tmp_path):
    out = tmp_path / "run"
    trainer = train(warm, out, "--metric_for_best_model", "eval/giou", "--load_best_model_at_end", "true")
    scored = {e["step"]: e["eval/giou"] for e in eval_entries(out) if e["step"] > 0}  # step 0 is not a checkpoint
    best_step = max(scored, key=lambda s: (scored[s], -s))  # transformers keeps the first of equal bests
    assert trainer.state.best_metric == scored[best_step]
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best_step}")
    final = load_file(out / "model.safetensors")
    best = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best)
    other = load_file(out / f"checkpoint-{6 - best_step}" / "model.safetensors")
    assert any(not torch.equal(other[k], best[k]) for k in best)  # the two checkpoints differ: the choice mattered


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eval_strategy", "no"], "eval_dataset 'sample:gres' is set but eval_strategy is \"no\""),
        (["--eval_dataset", "sample:gcg"], "reward 'gres_mask_reward' scores gres rows but the dataset holds only"),
        (["--metric_for_best_model", "eval/ap50"], "metric_for_best_model 'eval/ap50' is not logged by the gres"),
        (["--load_best_model_at_end", "true", "--save_steps", "3"], "save_steps 3 is not a multiple of eval_steps 2"),
        (["--eval_max_samples", "0"], "eval_max_samples must be >= 1"),
        # The sample's first three rows have targets: N-acc is undefined there.
        (["--eval_max_samples", "3", "--metric_for_best_model", "eval/n_acc"], "has no no-target rows"),
    ],
)
def test_bad_settings_fail_before_training_in_one_line(warm, tmp_path, extra, message):
    with pytest.raises(UsageError) as err:
        train(warm, tmp_path / "run", *extra)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_eval_strategy_without_eval_dataset_is_refused(warm, tmp_path):
    script_args, training_args, model_args = grpo.parse_args(["--config", str(demo.DEMO_RECIPE), "--model_name_or_path",
                                                              str(warm), "--output_dir", str(tmp_path / "run")])  # fmt: skip
    script_args.eval_dataset = None  # the demo recipe names one
    with pytest.raises(UsageError, match="eval_strategy is 'steps' but no eval_dataset is set"):
        grpo.main(script_args, training_args, model_args)
    assert not (tmp_path / "run").exists()


def test_shards_cover_the_split_once_with_equal_lengths():
    for n in (1, 5, 8, 15):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert len({len(s) for s in shards}) == 1
            assert sorted(set().union(*map(set, shards))) == list(range(n))


def test_gcg_evaluation_logs_ap50_miou_recall_as_samtok_rl_eval(tmp_path, tiny_bert):
    """GCG: AP50 / mIoU / Recall (Recall with the given phrase encoder) logged, equal to `samtok-rl eval`."""
    out = tmp_path / "run"
    trainer = grpo.main(["--config", str(demo.DEMO_RECIPE), "--dataset", "sample:gcg", "--reward_preset", "gcg",
                         "--reward_funcs", "format_reward", "--output_dir", str(out), "--max_steps", "1",
                         "--save_strategy", "no", "--eval_dataset", "sample:gcg", "--eval_strategy", "steps",
                         "--eval_steps", "1", "--eval_max_new_tokens", "48", "--eval_text_encoder", str(tiny_bert)])  # fmt: skip
    logged = [e for e in trainer.state.log_history if "eval_ap50" in e]
    assert [e["step"] for e in logged] == [0, 1]  # the demo recipe evaluates on start
    assert {f"eval_{n}" for n in ("ap50", "miou", "recall")} <= logged[0].keys()
    settings = json.loads((eval_folder(out, 1) / "eval_settings.json").read_text())
    assert settings["task"] == "gcg"
    result = evaluate(EvalConfig(
        model=str(out), task="gcg", data=settings["data"], split="val", mask_tokenizer="micro", think=settings["think"],
        output_dir=str(tmp_path / "eval"), max_new_tokens=48, min_pixels=settings["min_pixels"],
        max_pixels=settings["max_pixels"], backend="hf", device="cpu", progress=False, text_encoder=str(tiny_bert),
    ))  # fmt: skip
    standalone = result["splits"]["val"]
    in_training = json.loads((eval_folder(out, 1) / "metrics.json").read_text())["splits"]["val"]
    assert json.dumps(in_training, sort_keys=True) == json.dumps(standalone, sort_keys=True)
    for key, name in LOGGED["gcg"].items():
        if key in standalone:
            assert logged[0][f"eval_{name}"] == pytest.approx(standalone[key], abs=0, nan_ok=True) or (
                logged[0][f"eval_{name}"] is None and standalone[key] != standalone[key]
            )


def test_sampled_evaluation_is_seeded_and_recorded(warm, tmp_path):
    """`eval_temperature` > 0: one sampled answer per row, the same for the same seed and step, and said so."""
    texts = []
    for name in ("a", "b"):
        out = tmp_path / name
        train(warm, out, "--max_steps", "1", "--eval_steps", "1", "--save_strategy", "no", "--eval_temperature", "1.5",
              "--eval_on_start", "false")  # fmt: skip
        folder = eval_folder(out, 1)
        assert "sampled (temperature=1.5" in json.loads((folder / "eval_settings.json").read_text())["decoding"]
        texts.append([json.loads(x)["text"] for x in (folder / "predictions_val.jsonl").read_text().splitlines()])
    greedy = tmp_path / "greedy"
    train(warm, greedy, "--max_steps", "1", "--eval_steps", "1", "--save_strategy", "no", "--eval_on_start", "false")
    greedy_texts = [
        json.loads(x)["text"] for x in (eval_folder(greedy, 1) / "predictions_val.jsonl").read_text().splitlines()
    ]
    assert texts[0] == texts[1] and texts[0] != greedy_texts


def test_lora_policy_is_evaluated_through_its_adapters(warm, tmp_path):
    """With `use_peft` the evaluation answers with the adapted model: at step 0 (adapters start as the identity) it
    equals `samtok-rl eval` of the start model."""
    out = tmp_path / "run"
    train(warm, out, "--max_steps", "1", "--eval_steps", "1", "--save_strategy", "no", "--use_peft", "--lora_r", "8")
    settings = json.loads((eval_folder(out, 0) / "eval_settings.json").read_text())
    result = standalone_eval(warm, settings, tmp_path / "eval")
    in_training = json.loads((eval_folder(out, 0) / "metrics.json").read_text())["splits"]["val"]
    assert {k: in_training[k] for k in result["splits"]["val"]} == result["splits"]["val"]
    assert (eval_folder(out, 1) / "metrics.json").is_file()


def test_evaluations_do_not_change_the_training(warm, tmp_path):
    """The same run with and without evaluations ends on the same weights: evaluating draws no random numbers and
    leaves the policy's mode as it found it."""
    weights = []
    for name, evaluates in (("with", True), ("without", False)):
        script_args, training_args, model_args = grpo.parse_args([
            "--config", str(demo.DEMO_RECIPE), "--model_name_or_path", str(warm), "--output_dir", str(tmp_path / name),
            "--max_steps", "3", "--eval_steps", "1", "--save_strategy", "no", "--eval_max_new_tokens", "32",
        ])  # fmt: skip
        if not evaluates:
            script_args.eval_dataset, training_args.eval_strategy, training_args.eval_on_start = None, "no", False
        grpo.main(script_args, training_args, model_args)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    assert (tmp_path / "with" / "eval" / "step-000003").is_dir() and not (tmp_path / "without" / "eval").exists()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
