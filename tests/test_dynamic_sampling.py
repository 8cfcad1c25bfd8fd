"""Dynamic sampling on the tiny VLM (CPU, HF generate): only informative groups reach the optimizer, the cap is said,
resume replays the same extra prompts, and two processes keep identical batch shapes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_grpo import TINY_RUN, run

from samtok_rl import grpo
from samtok_rl.data import sample_paths
from samtok_rl.dynamic_sampling import merge_rounds, select_groups
from samtok_rl.errors import UsageError
from samtok_rl.trainer import SamtokGRPOTrainer


ROOT = Path(__file__).resolve().parents[1]


HALF = f"{Path(__file__).with_name('ds_rewards.py')}:half_constant_reward"
CONSTANT = f"{Path(__file__).with_name('ds_rewards.py')}:constant_reward"


class SpyTrainer(SamtokGRPOTrainer):
    """Records every batch that dynamic sampling hands to the optimizer (advantages by group, tensor shapes)."""

    batches: list[dict] = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            groups = output["advantages"].view(-1, self.num_generations)
            SpyTrainer.batches.append(
                {"step": self.state.global_step, "group_adv_spread": groups.abs().amax(dim=1).tolist(),
                 "shapes": {k: list(v.shape) for k, v in output.items() if isinstance(v, torch.Tensor)}}
            )  # fmt: skip
        return output


@pytest.fixture
def spy(monkeypatch):
    SpyTrainer.batches = []
    monkeypatch.setattr(grpo, "SamtokGRPOTrainer", SpyTrainer)
    return SpyTrainer


def ds_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "dynamic_sampling/extra_rounds" in e]


COMMON = ["--model_name_or_path", "tiny:qwen2_5_vl", "--reward_funcs", HALF, "--dynamic_sampling",
          "--max_train_samples", "8"]  # fmt: skip


def test_every_optimizer_batch_holds_informative_groups(tmp_path, datasets_dir, tiny_models, spy):
    trainer = run(tmp_path, *COMMON, "--dataset", datasets_dir["gres"], "--max_steps", "3")
    logs = ds_logs(trainer)
    assert len(logs) == 3 and len(spy.batches) == 3
    for entry, batch in zip(logs, spy.batches):
        if entry["dynamic_sampling/cap_hit"] == 0:
            assert entry["dynamic_sampling/batch_frac_reward_zero_std"] == 0
            assert all(spread > 0 for spread in batch["group_adv_spread"]), batch  # each group has a gradient
    # Half the prompts give no spread, so the sampler had to generate more than the batch size somewhere.
    assert any(e["dynamic_sampling/extra_rounds"] > 0 for e in logs)
    assert any(e["dynamic_sampling/informative_fraction"] < 1 for e in logs)
    assert all(e["dynamic_sampling/prompts_generated"] >= 2 for e in logs)
    # The batch keeps the shape TRL built it with: 2 prompts x 2 completions.
    assert all(b["shapes"]["advantages"] == [4] for b in spy.batches)


def test_the_cap_is_said_and_the_batch_stays_whole(tmp_path, datasets_dir, tiny_models, spy, caplog):
    caplog.set_level(logging.WARNING, logger="samtok_rl.trainer")
    trainer = run(tmp_path, "--model_name_or_path", "tiny:qwen2_5_vl", "--reward_funcs", CONSTANT, "--dynamic_sampling",
                  "--dynamic_sampling_max_rounds", "1", "--dataset", datasets_dir["gres"], "--max_steps", "2")  # fmt: skip
    logs = ds_logs(trainer)
    assert [e["dynamic_sampling/cap_hit"] for e in logs] == [1.0, 1.0]
    assert [e["dynamic_sampling/batch_frac_reward_zero_std"] for e in logs] == [1.0, 1.0]
    assert [e["dynamic_sampling/extra_rounds"] for e in logs] == [1.0, 1.0]
    assert "dynamic sampling: 1 extra round(s) (the cap) left 2 of 2 groups without reward spread" in caplog.text
    assert all(b["shapes"]["advantages"] == [4] for b in spy.batches)


def test_resume_replays_the_same_extra_prompts(tmp_path, datasets_dir, tiny_models):
    common = [*COMMON, "--dataset", datasets_dir["gres"], "--save_strategy", "steps", "--save_steps", "2"]
    full = run(tmp_path / "full", *common, "--max_steps", "4")
    run(tmp_path / "part", *common, "--max_steps", "2")
    resumed = run(tmp_path / "part", *common, "--max_steps", "4", "--resume_from_checkpoint",
                  str(tmp_path / "part/checkpoint-2"))  # fmt: skip
    keys = ("reward", "dynamic_sampling/extra_rounds", "dynamic_sampling/informative_fraction", "loss")

    def by_step(trainer):
        return {e["step"]: [e[k] for k in keys] for e in trainer.state.log_history if "reward" in e}

    resumed_steps, full_steps = by_step(resumed), by_step(full)
    assert set(resumed_steps) == set(full_steps) == {1, 2, 3, 4}
    for step in full_steps:
        assert resumed_steps[step] == pytest.approx(full_steps[step], abs=1e-6), step
    assert sum(full_steps[s][1] for s in (3, 4)) > 0  # the resumed part drew extra prompts
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_keep_identical_batch_shapes(tmp_path, datasets_dir, tiny_models):
    """Two processes on CPU (gloo): every process writes each batch's shapes."""
    argv = [*TINY_RUN, *COMMON, "--dataset", datasets_dir["gres"], "--max_steps", "3", "--output_dir", str(tmp_path),
            "--per_device_train_batch_size", "2"]  # fmt: skip
    env = dict(os.environ, SAMTOK_SPY_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    # torchrun sets WORLD_SIZE / RANK; with use_cpu, accelerate then runs multi-CPU (gloo), as `accelerate launch` would.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(Path(__file__).with_name("spy_launch.py")), *argv]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [[json.loads(line) for line in (tmp_path / f"shapes-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    for a, b in zip(*ranks):
        assert a["step"] == b["step"] and a["shapes"]["advantages"] == b["shapes"]["advantages"] == [2]
        assert a["extra_rounds"] == b["extra_rounds"]  # the processes went on (or stopped) together
    assert any(a["extra_rounds"] > 0 for a in ranks[0])


# ------------------------------------------------------------------------------------------ the plain functions


def test_merge_rounds_pads_each_side_and_keeps_rows():
    a = {
        "prompt_ids": torch.tensor([[5, 6], [7, 8]]),
        "completion_ids": torch.tensor([[1], [2]]),
        "advantages": torch.tensor([0.1, 0.2]),
        "num_images": [1, 1],
        "num_items_in_batch": torch.tensor(2),
    }
    b = {"prompt_ids": torch.tensor([[9, 9, 9], [4, 4, 4]]), "completion_ids": torch.tensor([[3, 3], [4, 4]]),
         "advantages": torch.tensor([0.3, 0.4]), "num_images": [1, 2], "num_items_in_batch": torch.tensor(4)}  # fmt: skip
    # Token types cover the prompt and the completion (TRL extends them with zeros): 2 means "image token" here.
    a["mm_token_type_ids"] = torch.tensor([[2, 1, 0], [1, 2, 0]])
    b["mm_token_type_ids"] = torch.tensor([[1, 2, 2, 0, 0], [2, 2, 1, 0, 0]])
    merged = merge_rounds([a, b], [(0, 1), (1, 1)], pad_token_id=0)
    assert merged["prompt_ids"].tolist() == [[0, 7, 8], [4, 4, 4]]  # prompts pad on the left
    assert merged["mm_token_type_ids"].tolist() == [[0, 1, 2, 0, 0], [2, 2, 1, 0, 0]]  # prompt part left, rest right
    assert merged["completion_ids"].tolist() == [[2, 0], [4, 4]]  # completions on the right
    assert merged["advantages"].tolist() == pytest.approx([0.2, 0.4]) and merged["num_images"] == [1, 2]
    assert "num_items_in_batch" not in merged
    with pytest.raises(ValueError, match="cannot merge the generation output 'odd'"):
        merge_rounds([dict(a, odd=object())], [(0, 0)], 0)


def test_select_groups_prefers_informative_groups_in_generation_order():
    assert select_groups([[False, True], [True, True]], 2) == ([(0, 1), (1, 0)], 0)
    assert select_groups([[False, False]], 2) == ([(0, 0), (0, 1)], 2)


def test_whole_groups_per_process_are_required():
    # 2 processes x 2 completions: TRL accepts a group of 4 split over both processes; dynamic sampling cannot.
    from types import SimpleNamespace

    from samtok_rl.checks import check_dynamic_sampling

    script = SimpleNamespace(dynamic_sampling=True, dynamic_sampling_tolerance=1e-4, dynamic_sampling_max_rounds=4)
    training = SimpleNamespace(per_device_train_batch_size=2, steps_per_generation=1, num_generations=4)
    with pytest.raises(UsageError, match="= 2 is not a multiple of num_generations = 4"):
        check_dynamic_sampling(script, training)
    check_dynamic_sampling(
        script, SimpleNamespace(per_device_train_batch_size=2, steps_per_generation=2, num_generations=4)
    )


@pytest.mark.parametrize(
    "recipe", sorted((ROOT / "recipes").glob("g*/*.yaml")), ids=lambda p: p.parent.name + "/" + p.stem
)
def test_the_recipes_take_dynamic_sampling_as_their_comments_say(
    recipe, datasets_dir, authors_files, tmp_path, monkeypatch
):
    task = recipe.parent.name
    assert "# dynamic_sampling: true" in recipe.read_text()
    data = ["--dataset", datasets_dir[task]]
    if "image_root:" in recipe.read_text():  # an authors' parquet recipe: a file in that schema
        monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
        data = ["--dataset", authors_files[task], "--image_root", str(sample_paths().images)]
    dry = ["--config", str(recipe), "--dry_run", *data, "--use_cpu", "--output_dir", str(tmp_path / "run"),
           "--dynamic_sampling"]  # fmt: skip
    assert grpo.main(dry) is None
