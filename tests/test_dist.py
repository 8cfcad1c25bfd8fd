"""Every launch configuration in `recipes/accelerate/` trained for real with 2 CPU processes (gloo): `make test-dist`.

Each config (DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2 as real FSDP2) runs `tests/dist_launch.py` (`samtok-rl train`
plus a spy, see there) with `accelerate launch --config_file <the shipped YAML> --num_processes 2 --mixed_precision
no` on the tiny Qwen2.5-VL, full fine-tune and LoRA, beta 0.04, 3 steps, then again resumed from checkpoint-2. The
checks: both ranks hold identical full weights after every step, and the weights move; the KL at step 1 is exactly 0
(the reference model is the start model); the saved model loads with `from_pretrained` and equals the trained
weights; the resumed run ends bit-identical to the uninterrupted one; ZeRO-3 and FSDP2 really shard; the vLLM sync
walk gathers only what it sends. Each case prints one row of the table in `benchmarks/README.md`.

How the CPU runs differ from a GPU launch, and why: `--use_cpu` (accelerate's gloo multi-CPU set-up for DDP and
FSDP2; DeepSpeed runs on its CPU accelerator, gloo without oneCCL), and for FSDP2 `tests/dist_launch.py`'s one
switch, since accelerate turns FSDP on only for GPU backends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Path(__file__).with_name("dist_launch.py")
REWARD = f"{Path(__file__).with_name('test_grpo.py')}:text_hash_reward"
HALF = f"{Path(__file__).with_name('ds_rewards.py')}:half_constant_reward"
CONFIGS = ["multi_gpu", "zero2", "zero3", "fsdp2"]
SHARDED = {"zero3", "fsdp2"}
TRAIN = [
    "--model_name_or_path", "tiny:qwen2_5_vl", "--reward_funcs", REWARD, "--bf16", "false",
    "--gradient_checkpointing", "false", "--report_to", "none", "--num_generations", "2",
    "--per_device_train_batch_size", "2", "--max_completion_length", "8", "--learning_rate", "1e-3",
    "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_steps", "2", "--seed", "0",
    "--max_train_samples", "8", "--beta", "0.04", "--max_steps", "3",
]  # fmt: skip
LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, argv: list[str], spy_dir: Path | None = None, script: list[str] | None = None):
    """`accelerate launch --config_file recipes/accelerate/<config>.yaml` with 2 processes; returns the process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SAMTOK_DIST_DIR=str(spy_dir or ""))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / f"{config}.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(free_port()), *(script or [str(LAUNCH)]), *argv]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train(config: str, out: Path, *extra: str) -> dict:
    """One 2-process run into `out` (spy files in `out/spy`); returns what the checks read."""
    spy = out / "spy"
    spy.mkdir(parents=True)
    start = time.perf_counter()
    proc = launch(config, [*TRAIN, "--use_cpu", "--output_dir", str(out / "run"), *extra], spy)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [read_jsonl(spy / f"weights-{r}.jsonl") for r in (0, 1)]
    return {
        "wall": wall,
        "weights": ranks,
        "final": [torch.load(spy / f"final-{r}.pt", weights_only=True) for r in (0, 1)],
        "sync": [read_jsonl(spy / f"sync-{r}.jsonl") for r in (0, 1)],
        "metrics": read_jsonl(out / "run" / "metrics.jsonl"),
        "log": proc.stdout + proc.stderr,
    }


def assert_ranks_identical(run: dict, steps: list[int]) -> None:
    a, b = run["weights"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == steps
    for ra, rb in zip(a, b):
        differ = [n for n in ra["digests"] if ra["digests"][n] != rb["digests"][n]]
        assert not differ, f"step {ra['step']}: ranks differ on {differ[:3]}"


def assert_equal_weights(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: names differ {sorted(set(got) ^ set(want))[:4]}"
    differ = [n for n in want if not torch.equal(got[n], want[n])]
    assert not differ, f"{what}: {len(differ)} tensors differ, first {differ[:3]}"


def load_saved(run_dir: Path, lora: bool) -> dict:
    from transformers import AutoModelForImageTextToText

    if not lora:
        model = AutoModelForImageTextToText.from_pretrained(run_dir, dtype=torch.float32)
    else:
        from peft import PeftModel

        from samtok_rl.tiny import resolve_model_path

        base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, run_dir)
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("config", CONFIGS)
def test_launch_config_trains_correctly(config, mode, tmp_path, datasets_dir):
    lora = mode == "lora"
    common = ["--dataset", datasets_dir["gres"], *(LORA if lora else [])]
    full = train(config, tmp_path / "full", *common)
    checkpoint = tmp_path / "full" / "run" / "checkpoint-2"
    resumed = train(config, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint))

    # Both ranks hold the same full weights after every step, and training moved them.
    assert_ranks_identical(full, [1, 2, 3])
    assert_ranks_identical(resumed, [3])
    first, last = full["weights"][0][0]["digests"], full["weights"][0][-1]["digests"]
    moved = [n for n in first if first[n] != last[n]]
    assert moved and all(("lora_" in n) == lora for n in moved), moved[:5]

    # The reference model is the start model: KL exactly 0 at step 1, then not.
    kl = [m["kl"] for m in full["metrics"] if "kl" in m]
    assert kl[0] == 0.0 and kl[2] > 0, kl

    # ZeRO-3 and FSDP2 really shard: each rank holds about half of the parameters.
    local = [r[0]["local_numel"] for r in full["weights"]]
    total = full["weights"][0][0]["total_numel"]
    if config in SHARDED:
        assert all(0.4 * total < n < 0.6 * total for n in local), (local, total)
    else:
        assert local == [total, total]

    # The saved model loads with from_pretrained and equals the trained weights; the resumed run ends on them too.
    assert_equal_weights(load_saved(tmp_path / "full" / "run", lora), full["final"][0], "saved model")
    assert_equal_weights(resumed["final"][0], full["final"][0], "resumed run")
    assert resumed["weights"][0][-1]["digests"] == full["weights"][0][-1]["digests"]

    # The vLLM sync walk: everything once, then only the trainable modules, gathering only what it sends.
    syncs = full["sync"][0]
    assert syncs[0]["tensors"] == 57 and all("lora" not in n and "base_layer" not in n for n in syncs[0]["names"])
    assert all(s["sent_bytes"] < syncs[0]["sent_bytes"] for s in syncs[1:])
    assert not any(n.startswith("model.visual.") for s in syncs[1:] for n in s["names"])
    if config in SHARDED:
        # ZeRO-3 gathers the synced modules whole (with PEFT their adapters too, to merge them); FSDP2 what it sends.
        want = "module_bytes" if config == "zero3" else "sent_bytes"
        assert all(s["gathered_bytes"] == s[want] for s in syncs[1:]), syncs
    else:
        assert all(s["gathered_bytes"] == 0 for s in syncs)
    print(
        f"\nTABLE | {config} | {mode} | ranks identical x3 | KL@1 {kl[0]} | local params {local[0]:,}/{total:,} | "
        f"saved == trained | resume == uninterrupted | sync gathered {syncs[0]['gathered_bytes']:,} then "
        f"{syncs[1]['gathered_bytes']:,} B (sent {syncs[1]['sent_bytes']:,}) | {full['wall']:.0f} s + "
        f"{resumed['wall']:.0f} s"
    )


def test_dynamic_sampling_under_zero3(tmp_path, datasets_dir):
    argv = ["--dataset", datasets_dir["gres"], "--reward_funcs", HALF, "--dynamic_sampling"]
    run = train("zero3", tmp_path, *argv)
    assert_ranks_identical(run, [1, 2, 3])
    extra = [m["dynamic_sampling/extra_rounds"] for m in run["metrics"] if "dynamic_sampling/extra_rounds" in m]
    assert len(extra) == 3 and sum(extra) > 0, extra  # extra rounds were generated, on both processes in step
    print(
        f"\nTABLE | zero3 | full + dynamic sampling | ranks identical x3 | extra rounds {extra} | {run['wall']:.0f} s"
    )


@pytest.mark.parametrize("config", ["multi_gpu", "fsdp2"])
def test_guided_groups_straddling_processes(config, tmp_path, datasets_dir):
    """Groups of 4 over 2 processes x 2 rows: every group straddles the processes. Its last slot (on rank 1) takes
    the reference answer, decided on the gathered scores (a random policy is never right), and LUFFY's forward pass
    for the guided completions runs on both ranks in step (FSDP2's forward is collective)."""
    argv = ["--dataset", datasets_dir["gres"], "--reward_preset", "gres", "--num_generations", "4",
            "--max_completion_length", "100", "--max_train_samples", "4", "--guided_groups", "true",
            "--guided_shaping", "luffy", "--rollout_prompts", "1"]  # fmt: skip
    run = train(config, tmp_path, *argv)
    assert_ranks_identical(run, [1, 2, 3])
    assert [m["guided/fraction"] for m in run["metrics"] if "guided/fraction" in m] == [1.0, 1.0, 1.0]
    assert all(m["guided/logprob"] < 0 for m in run["metrics"] if "guided/logprob" in m)
    records = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert [[r["guided"] for r in records if r["step"] == s] for s in (1, 2, 3)] == [[False] * 3 + [True]] * 3
    assert all(r["rewards"]["gres_mask_reward"] == 1.0 for r in records if r["guided"])
    print(
        f"\nTABLE | {config} | full + guided groups (LUFFY) | ranks identical x3 | guided 3/3 groups | "
        f"{run['wall']:.0f} s"
    )


def test_fsdp_config_on_cpu_is_refused_not_run_as_ddp(tmp_path, datasets_dir):
    """Without the test's switch, accelerate runs fsdp2.yaml on CPU as DDP: samtok-rl refuses it before training."""
    argv = [*TRAIN, "--dataset", datasets_dir["gres"], "--max_steps", "1", "--use_cpu", "--output_dir", str(tmp_path)]
    proc = launch("fsdp2", argv, script=["-m", "samtok_rl.grpo"])
    assert proc.returncode != 0
    assert "the launch config asks for FSDP (ACCELERATE_USE_FSDP) but accelerate set up MULTI_CPU" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before the first step


def test_cpu_flag_with_several_processes_is_said(tmp_path, datasets_dir):
    """`accelerate launch --cpu --num_processes 2` starts one process: the run says so in one line."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--main_process_port",
           str(free_port()), "-m", "samtok_rl.grpo", *TRAIN, "--dataset", datasets_dir["gres"], "--max_steps", "1",
           "--use_cpu", "--output_dir", str(out), "--dry_run"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "accelerate launch --cpu runs ONE process" in line]
    assert len(said) == 1, proc.stderr[-3000:]
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("config", ["multi_gpu", "zero3", "fsdp2"])
def test_gathered_evaluation_equals_one_process(config, tmp_path):
    """The benchmark evaluation with 2 processes (each answers a shard; 15 samples, so one is padded) gathers to
    exactly the single-process evaluation of the same model: every metric and every prediction."""
    from samtok_rl import demo, grpo

    warm = demo.warm_start_model(*grpo.parse_args(["--config", str(demo.DEMO_RECIPE)]), demo.WARM_START_STEPS,
                                 demo.WARM_START_LR)  # fmt: skip
    argv = ["--config", str(demo.DEMO_RECIPE), "--model_name_or_path", str(warm), "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--eval_dataset", "sample:gres", "--eval_strategy", "steps",
            "--eval_steps", "1", "--eval_on_start", "true", "--eval_max_new_tokens", "96", "--save_strategy", "no"]  # fmt: skip
    spy = tmp_path / "spy"
    spy.mkdir()
    proc = launch(config, [*argv, "--output_dir", str(tmp_path / "two")], spy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single = subprocess.run([sys.executable, "-m", "samtok_rl.grpo", *argv, "--output_dir", str(tmp_path / "one")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    folder = Path("eval") / "step-000000"
    two, one = (json.loads((tmp_path / r / folder / "metrics.json").read_text()) for r in ("two", "one"))
    assert two["splits"] == one["splits"] and two["run"]["samples"] == one["run"]["samples"] == 15
    two, one = (read_jsonl(tmp_path / r / folder / "predictions_val.jsonl") for r in ("two", "one"))
    assert [(r["id"], r["text"], r["masks"]) for r in two] == [(r["id"], r["text"], r["masks"]) for r in one]
    assert sum(bool(r["codes"]) for r in one) > 0  # the answers hold masks
    logged = [m for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "eval/giou" in m]
    assert [m["step"] for m in logged] == [0, 1]
    print(
        f"\nTABLE | {config} | benchmark eval, 2 processes | gathered == 1 process (15 samples, gIoU "
        f"{logged[0]['eval/giou']:.2f}) |"
    )
