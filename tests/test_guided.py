"""Guided groups (`samtok_rl.guided`): the reference answer in groups where the policy sampled no right answer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewards as reward_package
from rewards._bind import IdDecoder
from samtok_rl import grpo, rollouts
from samtok_rl.errors import UsageError
from samtok_rl.guided import groups_to_guide, guided_ids, guided_text, luffy_old_logps
from samtok_rl.prepare import load_prepared
from samtok_rl.rollouts import ROLLOUTS_FILE
from samtok_rl.tiny import load_tiny_vlm


ROOT = Path(__file__).resolve().parents[1]
SPY = Path(__file__).with_name("guided_spy.py")
# 2 prompts x 2 completions per step; 100 tokens hold the first rows' reference answers with their think part.
RUN = [
    "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
    "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "100",
    "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "no",
    "--seed", "0", "--max_train_samples", "4", "--model_name_or_path", "tiny:qwen2_5_vl", "--rollout_prompts", "2",
    "--guided_groups", "true",
]  # fmt: skip


def text_hash_reward(prompts, completions, **kwargs) -> list[float]:
    """A reward spread over [0, 1) by the completion's text: some sampled completions beat a threshold, some not."""
    return [(sum(map(ord, c[0]["content"])) % 11) / 11 for c in completions]


HASH = f"{Path(__file__).resolve()}:text_hash_reward"


def records_of(folder: Path) -> dict[tuple[int, int], list[dict]]:
    """rollouts.jsonl by (step, prompt index), each group's completions in generation order."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for line in (folder / ROLLOUTS_FILE).read_text().splitlines():
        record = json.loads(line)
        groups.setdefault((record["step"], record["prompt_index"]), []).append(record)
    return groups


def spy(tmp_path: Path, *args: str, env: dict | None = None, python: str = sys.executable) -> list[dict]:
    """Train through tests/guided_spy.py in a subprocess; its records (rank 0)."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    cmd = [python, str(SPY), *args, "--output_dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, env={**(env or os.environ), "SAMTOK_SPY_DIR": str(spy_dir)},
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line) for line in (spy_dir / "guided-0.jsonl").read_text().splitlines()]


def test_the_reference_answer_is_the_group_maximum_scored_by_the_same_rewards(tmp_path, datasets_dir, tiny_models):
    """A random policy never writes a right mask: every group gets its reference answer, in its last slot, in the
    think/answer format; the rewards (rescored from the record) are TRL's logged ones and it tops its group."""
    trainer = grpo.main([*RUN, "--max_steps", "2", "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
                         "--output_dir", str(tmp_path)])  # fmt: skip
    columns = ["prompt", "solution", "expression", "no_target"]
    rows = {rollouts._message_text(row["prompt"]): row
            for row in load_prepared(datasets_dir["gres"]).select_columns(columns)}  # fmt: skip
    groups = records_of(tmp_path)
    assert len(groups) == 4
    for group in groups.values():
        assert [r["guided"] for r in group] == [False, True]
        guided, sampled = group[1], group[0]
        assert guided["completion"] == guided_text(rows[guided["prompt"]])
        assert guided["completion"].startswith("<think>") and guided["completion"].endswith("</answer>")
        for record in group:
            rescored = {name: reward_package.REWARDS[name](None, [record["completion"]], solution=[record["solution"]],
                                                           task=["gres"])[0] for name in reward_package.PRESETS["gres"]}  # fmt: skip
            assert record["rewards"] == pytest.approx(rescored)
        assert guided["rewards"]["gres_mask_reward"] == 1.0 > sampled["rewards"]["gres_mask_reward"]
        assert guided["reward"] == max(r["reward"] for r in group) > sampled["reward"]
        assert guided["advantage"] > 0 > sampled["advantage"]
    logged = [e for e in trainer.state.log_history if "guided/fraction" in e]
    assert [e["guided/fraction"] for e in logged] == [1.0, 1.0]
    assert all(e["guided/logprob"] < 0 and e["guided/advantage"] > 0 for e in logged)
    assert all(e["guided/code_logprob"] < 0 for e in logged)  # the sample's first rows hold masks
    # The inspector marks them: one chip per guided completion on the step cards.
    from samtok_rl.inspector import InspectConfig, inspect_folder

    html = Path(inspect_folder(InspectConfig(folder=str(tmp_path), mask_tokenizer="micro"))["index"]).read_text()
    assert html.count("reference answers (guided groups)</span>") == 4
    assert 'alt="guided groups"' in html  # the curves of guided/fraction, logprob and advantage


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("task", ["gres", "gcg"])
def test_guided_ids_round_trip(kind, task, datasets_dir, tiny_models):
    """The ids are the tokenizer's encoding of the text: decoded as the rewards decode, they give the text back, and
    they are the completion part of the whole chat (prompt + answer + end of turn) the warm start was trained on."""
    _, processor = load_tiny_vlm(kind)
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    mask_token_ids = {i for t, i in tokenizer.get_vocab().items() if t.startswith("<|mt_")}
    for row in load_prepared(datasets_dir[task]).select_columns(["prompt", "solution", "expression", "no_target"]):
        text = guided_text(row)
        ids = guided_ids(tokenizer, text, eos)
        assert ids[-1] == eos and IdDecoder(tokenizer)([ids]) == [text]
        assert tokenizer.encode(text, add_special_tokens=False) == ids[:-1]
        # Each mask token is one id, as the model emits it.
        assert sum(i in mask_token_ids for i in ids) == text.count("<|mt_") > 0 or "<|mt_" not in text
        prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.encode(prompt + text + "<|im_end|>", add_special_tokens=False)
        assert whole == tokenizer.encode(prompt, add_special_tokens=False) + ids


def test_a_group_is_guided_only_below_the_threshold_and_when_the_reference_scores_more():
    sampled = torch.tensor([0.2, 0.4, 1.0, 0.0, 0.0, 0.0, 0.3, 0.1, float("nan"), float("nan")])
    reference = torch.tensor([math.nan, 0.9, math.nan, 1.0, math.nan, 0.0, math.nan, 0.2, math.nan, 0.5])
    # groups of 2: best 0.4 (ref 0.9: guided), 1.0 (right: not), 0.0 (ref 0.0: not more), 0.3 (ref 0.2: less),
    # unscorable (ref 0.5: guided)
    assert groups_to_guide(sampled, reference, 2, 1.0).tolist() == [True, False, False, False, True]
    assert groups_to_guide(sampled, reference, 2, 0.3).tolist() == [False, False, False, False, True]


def test_luffy_shaping_rides_on_trls_clipped_ratio():
    """With the shaped "old" log-probabilities, TRL's clipped term -min(r A, clip(r) A) has the gradient of LUFFY's
    -A pi / (pi + gamma) for a positive advantage, and the ratio never exceeds 1/4 (so it is never clipped)."""
    gamma, eps, advantage = 0.1, 0.2, 1.7
    pi = torch.tensor([1e-6, 0.01, 0.1, 0.5, 0.99], dtype=torch.float64)
    logp = torch.log(pi).requires_grad_()
    ratio = torch.exp(logp - luffy_old_logps(logp.detach(), gamma))
    loss = -torch.min(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage).sum()
    loss.backward()
    expected = -advantage * gamma * pi / (pi + gamma) ** 2  # d/dlogp of -A pi / (pi + gamma)
    torch.testing.assert_close(logp.grad, expected)
    assert ratio.max().item() <= 0.25 + 1e-12


@pytest.mark.parametrize("shaping", ["none", "luffy"])
def test_the_loss_sees_the_chosen_ratio_for_guided_tokens(tmp_path, datasets_dir, tiny_models, shaping):
    """What TRL's loss gets, recomputed before each loss call: LUFFY's gamma pi / (pi + gamma)^2 on the guided
    tokens and 1 elsewhere; without shaping (two iterations, so TRL keeps "old" log-probabilities) 1 everywhere at
    the first iteration."""
    records = spy(tmp_path, *RUN, "--max_steps", "2", "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
                  "--guided_shaping", shaping, "--num_iterations", "2")  # fmt: skip
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2  # one generation batch, two iterations over it (steps 1 and 2)
    first = losses[:1]  # the first iteration: no update since the logprobs were taken
    if shaping == "luffy":
        assert all(x["guided_ratio_max"] <= 0.25 + 1e-6 and x["guided_ratio_vs_shaped"] < 1e-5 for x in first)
    else:
        assert all(x["guided_ratio_vs_one"] < 1e-5 for x in first)
    assert all(x["others_ratio_vs_one"] < 1e-5 for x in first)
    assert losses[1]["others_ratio_vs_one"] > 1e-3  # the second iteration follows an update: the check can see it


def test_dynamic_sampling_keeps_guided_groups(tmp_path, datasets_dir, tiny_models):
    """With the mask reward alone, a random policy's groups all score 0 (no spread): dynamic sampling would spend
    its extra rounds. A guided group is informative by construction: no extra round, every group kept."""
    common = [*RUN, "--max_steps", "2", "--dataset", datasets_dir["gres"], "--reward_funcs", "gres_mask_reward",
              "--guided_reward", "gres_mask_reward", "--dynamic_sampling", "true", "--dynamic_sampling_max_rounds", "1"]  # fmt: skip
    plain = grpo.main([*common, "--guided_groups", "false", "--output_dir", str(tmp_path / "plain")])
    guided = grpo.main([*common, "--output_dir", str(tmp_path / "guided")])

    def logged(trainer, key):
        return [e[key] for e in trainer.state.log_history if key in e]

    assert logged(plain, "dynamic_sampling/extra_rounds") == [1, 1]
    assert logged(guided, "dynamic_sampling/extra_rounds") == [0, 0]
    assert logged(guided, "dynamic_sampling/informative_fraction") == [1.0, 1.0]


def test_resume_guides_the_same_groups(tmp_path, datasets_dir, tiny_models):
    """A hash reward as the judge with threshold 0.6: some groups are guided, some not, decided by what was sampled.
    A run resumed at step 2 guides exactly the groups the uninterrupted run guided at steps 3 and 4."""
    common = [*RUN, "--dataset", datasets_dir["gres"], "--reward_preset", "gres", "--reward_funcs", HASH,
              "--guided_reward", "text_hash_reward", "--guided_threshold", "0.6", "--save_strategy", "steps",
              "--save_steps", "2"]  # fmt: skip
    grpo.main([*common, "--max_steps", "4", "--output_dir", str(tmp_path / "full")])
    grpo.main([*common, "--max_steps", "2", "--output_dir", str(tmp_path / "part")])
    grpo.main([*common, "--max_steps", "4", "--output_dir", str(tmp_path / "part"), "--resume_from_checkpoint",
               str(tmp_path / "part/checkpoint-2")])  # fmt: skip

    def guided(folder):
        return {key: [(r["guided"], r["completion"]) for r in group] for key, group in records_of(folder).items()}

    full, resumed = guided(tmp_path / "full"), guided(tmp_path / "part")
    assert set(full) == set(resumed) == {(s, p) for s in range(1, 5) for p in (0, 1)}
    flags = [g[-1][0] for g in full.values()]
    assert any(flags) and not all(flags), flags  # the decision depends on the samples
    assert all(resumed[(s, p)] == full[(s, p)] for s in (3, 4) for p in (0, 1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guided_shaping", "clip"], "guided_shaping must be one of"),
        (["--guided_shaping", "luffy", "--loss_type", "cispo"], "luffy needs a clipped loss_type"),
        (
            ["--guided_shaping", "luffy", "--importance_sampling_level", "sequence"],
            "importance_sampling_level must be",
        ),
        (["--guided_shaping", "luffy", "--epsilon", "0.8"], "luffy needs epsilon < 0.75"),
        (["--guided_shaping", "luffy", "--guided_gamma", "0"], "guided_gamma must be > 0"),
        (["--guided_threshold", "nan"], "guided_threshold must be a finite number"),
        (["--guided_reward", "text_hash_reward"], "guided_reward 'text_hash_reward' is not one of the run's rewards"),
        (["--reward_preset", None, "--reward_funcs", "gres_mask_reward"], "set guided_reward"),
        (["--max_completion_length", "16"], "row 0: the reference answer takes"),
    ],
)
def test_bad_guided_settings_fail_in_one_line(tmp_path, datasets_dir, args, message):
    argv = [*RUN, "--max_steps", "1", "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
            "--output_dir", str(tmp_path)]  # fmt: skip
    if args[:2] == ["--reward_preset", None]:
        argv = argv[: argv.index("--reward_preset")] + argv[argv.index("--reward_preset") + 2 :]
        args = args[2:]
    with pytest.raises(UsageError, match=message) as err:
        grpo.main([*argv, *args])
    assert "\n" not in str(err.value)
    if "row 0" in message:
        assert datasets_dir["gres"] in str(err.value)
