"""The CPU demo: SFT warm start of the tiny VLM, then GRPO with a real learning signal."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import rewards
from samtok_rl import demo, grpo, loading
from samtok_rl.parsing import find_span_codes
from samtok_rl.tiny import resolve_model_path
from samtok_rl.warmstart import sft_dataset, warm_start, warm_start_dir


@pytest.fixture(scope="module")
def recipe():
    return grpo.parse_args(["--config", str(demo.DEMO_RECIPE)])


@pytest.fixture(scope="module")
def warm(recipe):
    # The demo's own settings, so the cached checkpoint is shared with `make demo` (~30 s to build on 2 cores).
    return demo.warm_start_model(*recipe, demo.WARM_START_STEPS, demo.WARM_START_LR)


def test_sft_dataset_is_prompt_completion_with_images(recipe):
    dataset = loading.load_dataset(*recipe[:2])
    sft = sft_dataset(dataset)
    assert sorted(sft.column_names) == ["completion", "image", "prompt"]
    assert isinstance(sft.features["image"], datasets.Image)
    row, source = sft[0], dataset[0]
    assert row["prompt"] == source["prompt"]
    text = row["completion"][0]["content"][0]["text"]
    assert rewards.format_reward(None, [text]) == [1.0]
    assert rewards.gres_mask_reward(None, [text], solution=[source["solution"]]) == [1.0]


def test_warm_start_is_cached_and_keyed(recipe, warm, tmp_path):
    dataset = loading.load_dataset(*recipe[:2])
    base = resolve_model_path(recipe[2].model_name_or_path)
    settings = (demo.WARM_START_STEPS, demo.WARM_START_LR, demo.WARM_START_BATCH)
    key = warm_start_dir(base, dataset, *settings, seed=0)
    assert key == warm
    assert warm_start_dir(base, dataset, demo.WARM_START_STEPS + 1, *settings[1:], seed=0) != key
    assert warm_start_dir(base, dataset, *settings, seed=1) != key
    assert warm_start_dir(base, dataset.select(range(3)), *settings, seed=0) != key
    # A finished folder is returned as is: no training (steps=10**9 would take forever).
    assert warm_start(base, dataset, warm, steps=10**9) == warm


def test_warm_started_model_answers_with_mask_spans(recipe, warm):
    dataset = loading.load_dataset(*recipe[:2])
    model = AutoModelForImageTextToText.from_pretrained(warm).eval()
    processor = AutoProcessor.from_pretrained(warm)
    rows = [row for row in dataset.select(range(8)) if not row["no_target"]][:4]
    good = 0
    for row in rows:
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[row["image"]], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=128, do_sample=False)
        completion = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        good += bool(find_span_codes(completion)) and rewards.format_reward(None, [completion]) == [1.0]
    assert good >= len(rows) // 2, f"{good}/{len(rows)} greedy answers are formatted and hold a mask span"


def test_demo_grpo_has_a_learning_signal(warm, tmp_path, capsys, browser):
    trainer = demo.main(
        ["--output_dir", str(tmp_path), "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true"]
    )
    assert trainer.state.global_step == 2
    assert trainer.model.config.name_or_path == str(warm)  # GRPO started from the warm start
    steps = demo.step_logs(trainer)
    assert len(steps) == 2
    assert any(step["reward_std"] > 0 for step in steps)
    assert any(step["grad_norm"] > 0 for step in steps)
    assert any(step["frac_reward_zero_std"] < 1 for step in steps)
    assert max(step["rewards/format_reward/mean"] for step in steps) > 0
    out = capsys.readouterr().out
    assert f"warm start {warm}, then 2 GRPO steps" in out
    assert "format_reward" in out and "step 1" in out and "step 2" in out
    # One compact console line per step instead of transformers' log dict; every metric in metrics.jsonl.
    assert "{'loss'" not in out and "'rewards/" not in out
    lines = [line for line in out.splitlines() if line.startswith(("step 1/2  reward", "step 2/2  reward"))]
    assert len(lines) == 2 and all("format " in line and "zero-std" in line and "s/step" in line for line in lines)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in logged if "reward" in e] == [dict(e, step=e["step"]) for e in steps]
    # The benchmark's metric before GRPO and at the end, beside the rewards.
    assert [e["step"] for e in logged if "eval/giou" in e] == [0, 2]
    evaluations = [e for e in trainer.state.log_history if "eval_giou" in e]
    table = out[out.index("eval split: 15 rows") :].splitlines()
    assert table[1].split() == ["gIoU", f"{evaluations[0]['eval_giou']:.2f}", f"{evaluations[1]['eval_giou']:.2f}"]
    assert table[3].split()[0] == "N-acc"

    # The demo ends with its report: rollouts with decoded masks over the images, curves; it renders in Chromium.
    index = tmp_path / "report" / "index.html"
    assert f"report: {index}" in out
    records = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    groups = len({(r["step"], r["prompt_index"]) for r in records})
    check, console, dom, shot = browser(index)
    assert check["broken"] == [] and check["errors"] == [] and console == [], (check, console)
    curves = dom.count('src="img/curve')
    assert curves >= 4  # reward components, total reward, monitors, GRPO signal
    assert check["images"] == groups + len(records) + curves  # a GT picture per group, one per completion, the curves
    assert dom.count('class="card"') == groups and 'alt="total reward"' in dom
    assert dom.count("<b>#1</b>") == groups  # each group sorted, best completion first
    # Not a blank page: many colours, and the overlay colours of the masks are on screen.
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500


def test_sft_target_follows_the_prompts_format():
    """A think prompt is answered with a think part; a prompt prepared without the instruction gets the bare answer
    (the format of SAMTok's SFT models), so a warm start never teaches tags the prompt did not ask for."""
    from samtok_rl.prompts import conversation, gres_question
    from samtok_rl.warmstart import completion_text

    row = {"expression": "the cat", "no_target": False, "solution": "```json\n[]\n```"}
    think = completion_text(dict(row, prompt=conversation(gres_question("the cat", think=True))))
    assert think.startswith("<think>The cat is in the image.</think><answer>") and think.endswith("</answer>")
    assert completion_text(dict(row, prompt=conversation(gres_question("the cat", think=False)))) == row["solution"]
