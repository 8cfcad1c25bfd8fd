"""A run owns its output folder (`samtok_rl.run_dir`): fault injection on the tiny VLM. Each test asserts the message
and that nothing was overwritten or lost."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from samtok_rl import grpo
from samtok_rl.checks import resolve_resume
from samtok_rl.errors import UsageError
from samtok_rl.run_dir import LOCK_FILE


TRAIN = [
    "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
    "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
    "--logging_steps", "1", "--seed", "0", "--max_train_samples", "4", "--model_name_or_path", "tiny:qwen2_5_vl",
    "--reward_preset", "gres", "--save_strategy", "steps", "--save_steps", "1", "--rollout_prompts", "2",
]  # fmt: skip


def files_state(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def steps(path: Path, key: str | None = None) -> Counter:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter(r["step"] for r in records if key is None or key in r)


def test_a_second_run_cannot_take_an_output_dir_in_use(tmp_path, datasets_dir):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from samtok_rl.run_dir import lock_output_dir; lock_output_dir({str(out)!r}); "
         "print('locked', flush=True); import time; time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files_state(out)
        argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--max_steps", "1"]
        with pytest.raises(UsageError, match=rf"is in use by another training run \(pid {holder.pid} on "):
            grpo.main(argv)
        assert files_state(out) == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything: its lock file stays, its lock does not.
    assert (out / LOCK_FILE).read_text().startswith(f"pid {holder.pid} ")
    grpo.main([*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--max_steps", "1"])
    assert (out / "checkpoint-1").is_dir()


def test_resume_after_a_kill_keeps_every_step_once(tmp_path, datasets_dir, caplog):
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"]]
    grpo.main([*argv, "--max_steps", "3"])
    # The run was killed while writing step 4's logs: a torn last line.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.')
    first = steps(out / "rollouts.jsonl")
    assert set(first) == {1, 2, 3}

    caplog.set_level(logging.WARNING, logger="samtok_rl.grpo")
    grpo.main([*argv, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-1")])
    assert steps(out / "metrics.jsonl", key="loss") == {1: 1, 2: 1, 3: 1}
    assert steps(out / "rollouts.jsonl") == first  # the same records per step, once
    # The interrupted run's steps 2-3 and its torn line are kept aside, not lost.
    superseded = (out / "metrics.jsonl.superseded").read_text().splitlines()
    assert superseded[-1] == '{"step": 4, "loss": 0.'
    assert {json.loads(line)["step"] for line in superseded[:-1]} == {2, 3}
    assert steps(out / "rollouts.jsonl.superseded") == Counter({2: first[2], 3: first[3]})
    assert "records after step 1 (the interrupted run's) moved to metrics.jsonl.superseded" in caplog.text


def test_a_fresh_run_refuses_a_folder_with_another_runs_logs(tmp_path, datasets_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n{"step": 2, "loss": 0.2}\n')
    before = files_state(out)
    with pytest.raises(UsageError, match=r"holds logs \(metrics.jsonl\) of an earlier run"):
        grpo.main([*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--max_steps", "1"])
    assert files_state(out) == before
    # Nor may a resume write into it from another run's checkpoint.
    other = tmp_path / "other"
    grpo.main([*TRAIN, "--output_dir", str(other), "--dataset", datasets_dir["gres"], "--max_steps", "1"])
    with pytest.raises(UsageError, match=r"holds the logs of another run \(metrics.jsonl\), not of"):
        grpo.main([*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"], "--max_steps", "2",
                   "--resume_from_checkpoint", str(other / "checkpoint-1")])  # fmt: skip
    assert files_state(out) == before


def test_a_resume_that_changes_the_run_is_refused_unless_accepted(tmp_path, datasets_dir):
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"]]
    grpo.main([*argv, "--max_steps", "1"])
    before = files_state(out)
    changed = [*argv, "--max_steps", "2", "--resume_from_checkpoint", str(out / "checkpoint-1"),
               "--num_generations", "4", "--reward_funcs", "rewards.examples.length_penalty.length_penalty_reward"]  # fmt: skip
    with pytest.raises(UsageError) as err:
        grpo.main(changed)
    message = str(err.value)
    assert "would change the run: rewards [" in message and "length_penalty_reward" in message
    assert "num_generations 2 -> 4" in message and "--accept_resume_changes" in message
    assert files_state(out) == before
    grpo.main([*changed, "--accept_resume_changes"])
    run = json.loads((out / "samtok_run.json").read_text())
    assert run["num_generations"] == 4 and run["resume_changes"][0]["step"] == 1
    assert any(c.startswith("num_generations 2 -> 4") for c in run["resume_changes"][0]["changes"])


def test_resume_true_skips_a_checkpoint_torn_by_a_kill(tmp_path, caplog):
    out = tmp_path / "run"
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        for name in ("config.json", "trainer_state.json", "optimizer.pt"):
            (checkpoint / name).write_text("{}")
    (out / "checkpoint-2" / "optimizer.pt").unlink()  # killed while saving
    caplog.set_level(logging.WARNING, logger="samtok_rl.checks")
    args = SimpleNamespace(resume_from_checkpoint="true", output_dir=str(out))
    assert resolve_resume(args) == str(out / "checkpoint-1")
    assert "checkpoint-2 has no optimizer state" in caplog.text and "resuming from checkpoint-1" in caplog.text


def test_resume_with_nothing_left_to_train_is_refused(tmp_path, datasets_dir):
    out = tmp_path / "run"
    argv = [*TRAIN, "--output_dir", str(out), "--dataset", datasets_dir["gres"]]
    grpo.main([*argv, "--max_steps", "2"])
    with pytest.raises(UsageError, match=r"is at step 2 and max_steps is 1: nothing left to train"):
        grpo.main([*argv, "--max_steps", "1", "--resume_from_checkpoint", str(out / "checkpoint-2"), "--dry_run"])


def test_output_dir_naming_a_file_is_refused(tmp_path, datasets_dir):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(UsageError, match=r"output_dir .*notes.txt' is a file, not a folder"):
        grpo.main([*TRAIN, "--output_dir", str(target), "--dataset", datasets_dir["gres"], "--dry_run"])
    assert target.read_text() == "mine"
