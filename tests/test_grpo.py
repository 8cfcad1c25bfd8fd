"""The GRPO entry point on the tiny VLMs (CPU, HF generate): presets, LoRA, recipes, resume."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText

from rewards import REWARDS
from samtok_rl import checks, grpo, loading
from samtok_rl.data import sample_paths
from samtok_rl.errors import UsageError
from samtok_rl.prepare import read_source
from samtok_rl.tiny import build_tiny_vlm


ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*(ROOT / "recipes").glob("g*/*.yaml"), ROOT / "recipes" / "demo.yaml"])  # training recipes
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))

# A 2-step run: 2 prompts x 2 generations of 8 tokens per step.
TINY_RUN = [
    "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
    "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "4",
    "--max_completion_length", "8", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
    "--logging_steps", "1", "--save_strategy", "no", "--seed", "0", "--max_train_samples", "4",
]  # fmt: skip


def text_hash_reward(prompts, completions, **kwargs) -> list[float]:
    """A reward that varies across random completions, so advantages (and gradients) are non-zero."""
    return [(sum(map(ord, c[0]["content"])) % 7) / 7 for c in completions]


VARYING = f"{Path(__file__).resolve()}:text_hash_reward"


def run(tmp_path, *args: str):
    return grpo.main([*TINY_RUN, "--output_dir", str(tmp_path), *args])


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in AutoModelForImageTextToText.from_pretrained(path).named_parameters()}


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("task", ["gres", "gcg"])
def test_two_steps_train_and_freeze_vision(kind, task, tmp_path, datasets_dir, tiny_models):
    trainer = run(
        tmp_path,
        "--model_name_or_path", f"tiny:{kind}", "--dataset", datasets_dir[task],
        "--reward_preset", task, "--reward_funcs", VARYING,
    )  # fmt: skip
    assert trainer.state.global_step == 2
    logged = {k for entry in trainer.state.log_history for k in entry}
    preset = {"gres": "gres_mask_reward", "gcg": "gcg_mask_reward"}[task]
    assert {f"rewards/{preset}/mean", "rewards/text_hash_reward/mean", "reward"} <= logged

    before = initial_weights(tiny_models[kind])
    changed, vision = [], []
    for name, param in trainer.model.named_parameters():
        if name.startswith("model.visual."):
            assert not param.requires_grad
            vision.append(torch.equal(param.detach(), before[name]))
        elif param.requires_grad:
            changed.append(not torch.equal(param.detach(), before[name]))
    assert all(vision) and vision
    assert all(changed), "every trainable parameter should move in 2 steps"
    assert (tmp_path / "model.safetensors").is_file()


def test_lora_trains_adapters_only(tmp_path, datasets_dir, tiny_models):
    trainer = run(
        tmp_path,
        "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", datasets_dir["gres"],
        "--reward_preset", "gres", "--reward_funcs", VARYING, "--use_peft", "--lora_r", "8",
    )  # fmt: skip
    before = initial_weights(tiny_models["qwen2_5_vl"])
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert any(not torch.all(p == 0) for n, p in trainable.items() if "lora_B" in n)
    # The base weights, including the mask-token embedding rows, are untouched.
    embed = trainer.model.get_input_embeddings().weight
    assert torch.equal(embed.detach(), before["model.language_model.embed_tokens.weight"])


def test_rejects_lora_embedding_rows_with_vllm():
    script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(
        ["--use_cpu", "--use_peft", "--lora_modules_to_save", "embed_tokens", "--use_vllm"]
    )
    with pytest.raises(ValueError, match="vLLM rejects LoRA adapters"):
        loading.make_peft_config(model_args, training_args)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_dry_runs(recipe, datasets_dir, authors_files, tmp_path, monkeypatch):
    config = yaml.safe_load(recipe.read_text())
    task = config["reward_preset"]
    # Without a GPU, bf16 recipes only parse with use_cpu; a dataset that is not the bundled sample (prepared with the
    # recipe's own mask tokenizer) is swapped for the sample prepared in the fixture, an authors' parquet file for
    # one in the same schema (converted into a cache of the test's own).
    dataset = config["dataset"] if config["dataset"].startswith("sample:") else datasets_dir[task]
    extra = []
    if config["dataset"].endswith(".parquet"):
        monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
        dataset, extra = authors_files[task], ["--image_root", str(sample_paths().images)]
    script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(
        ["--config", str(recipe), "--dry_run", "--dataset", dataset, "--use_cpu", "--output_dir", str(tmp_path / "run"),
         *extra]
    )  # fmt: skip
    assert script_args.dry_run and model_args.model_name_or_path
    assert grpo.main(script_args, training_args, model_args) is None
    # Files named in the recipe's comments (launch configs, other recipes) exist.
    for path in re.findall(r"recipes/[\w./-]+\.(?:yaml|sh)", recipe.read_text()):
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("config", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_machines == 1 and loaded.mixed_precision == "bf16"


def launch_env(config: Path) -> dict[str, str]:
    """The variables `accelerate launch --config_file <config>` sets that tell a sharded launch."""
    loaded = yaml.safe_load(config.read_text())
    if loaded["distributed_type"] == "DEEPSPEED":
        return {"ACCELERATE_DEEPSPEED_ZERO_STAGE": str(loaded["deepspeed_config"]["zero_stage"])}
    if loaded["distributed_type"] == "FSDP":
        return {"ACCELERATE_USE_FSDP": "true"}
    return {}


@pytest.mark.parametrize("config", ACCELERATE, ids=lambda p: p.name)
def test_launch_config_dry_runs_and_refuses_in_run_token_adding(config, datasets_dir, monkeypatch, tmp_path):
    """Each launch configuration's CPU equivalent of `--dry_run`: the GRES recipe passes; adding mask tokens inside
    a sharded (ZeRO-3, FSDP) launch is refused with the command to run beforehand."""
    for key, value in launch_env(config).items():
        monkeypatch.setenv(key, value)
    recipe = ROOT / "recipes/gres/qwen2_5_vl_3b_samtok_grpo.yaml"
    dry = [
        "--config",
        str(recipe),
        "--dry_run",
        "--dataset",
        datasets_dir["gres"],
        "--use_cpu",
        "--output_dir",
        str(tmp_path),
    ]
    assert grpo.main(dry) is None
    sharded = config.stem in ("zero3", "fsdp2")
    assert (checks.sharded_launch(grpo.parse_args(dry)[1]) is not None) == sharded
    if sharded:
        with pytest.raises(ValueError, match="run `samtok-rl add-mask-tokens"):
            grpo.main([*dry, "--add_mask_tokens"])
    else:
        assert grpo.main([*dry, "--add_mask_tokens"]) is None


def test_fsdp2_reference_model_loads_real_weights_on_every_rank():
    # With cpu_ram_efficient_loading, ranks other than 0 load zeros and only the policy is broadcast by accelerate;
    # TRL's FSDP2 preparation of the reference model (beta > 0) does not broadcast it.
    fsdp = yaml.safe_load((ROOT / "recipes/accelerate/fsdp2.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False


def save_base_model(folder: Path) -> int:
    """A tiny base VLM without the mask tokens, saved to `folder`; returns its embedding rows."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from samtok_rl.tiny import _model_config, build_tiny_processor

    processor = build_tiny_processor("qwen2_5_vl")
    base = Qwen2_5_VLForConditionalGeneration(_model_config("qwen2_5_vl", processor.tokenizer))
    base.save_pretrained(folder)
    processor.save_pretrained(folder)
    return base.get_input_embeddings().weight.shape[0]


def test_add_mask_tokens_in_a_single_process_run(tmp_path, datasets_dir):
    from samtok_rl.tokens import MASK_TOKENS

    rows = save_base_model(tmp_path / "base")
    trainer = run(tmp_path / "run", "--model_name_or_path", str(tmp_path / "base"), "--add_mask_tokens",
                  "--dataset", datasets_dir["gres"], "--reward_preset", "gres", "--max_steps", "1")  # fmt: skip
    saved = tmp_path / "run" / "base_with_mask_tokens"
    assert trainer.model.name_or_path == str(saved)
    assert trainer.model.get_input_embeddings().weight.shape[0] == rows + len(MASK_TOKENS)
    checks.check_mask_tokens(trainer.processing_class)


def test_add_mask_tokens_command(tmp_path):
    from transformers import AutoProcessor

    from samtok_rl import add_tokens
    from samtok_rl.tiny import build_tiny_processor
    from samtok_rl.tokens import MASK_TOKENS

    processor = build_tiny_processor("qwen2_5_vl")  # a base model: no mask tokens
    rows = save_base_model(tmp_path / "base")
    with pytest.raises(ValueError, match="missing from the tokenizer"):
        checks.check_mask_tokens(processor)

    out = add_tokens.main(["--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(tmp_path / "mt")])
    checks.check_mask_tokens(AutoProcessor.from_pretrained(out))
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == rows + len(MASK_TOKENS)
    with pytest.raises(UsageError, match="already holds a model"):  # never overwrites a model
        add_tokens.main(["--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(out)])


def test_frozen_vision_count_reads_zero3_sizes():
    """Under ZeRO-3 every parameter is an empty placeholder carrying its real size as `ds_numel`."""
    model = AutoModelForImageTextToText.from_pretrained(build_tiny_vlm("qwen2_5_vl"))
    real = sum(p.numel() for p in model.model.visual.parameters())
    for p in model.model.visual.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert loading.freeze_vision_tower(model) == real > 0


def test_bad_recipes_fail_clearly(datasets_dir):
    def dry(*args):
        return grpo.main(["--use_cpu", "--dry_run", "--dataset", datasets_dir["gres"], *args])

    with pytest.raises(ValueError, match="unknown reward"):
        dry("--model_name_or_path", "x", "--reward_funcs", "no_such_reward")
    with pytest.raises(ValueError, match="unknown reward_preset"):
        dry("--model_name_or_path", "x", "--reward_preset", "seg")
    with pytest.raises(ValueError, match="2 reward_weights for 4 rewards"):
        dry("--model_name_or_path", "x", "--reward_preset", "gres", "--reward_weights", "1", "1")
    with pytest.raises(ValueError, match="lacks columns"):
        checks.check_columns(read_source("gres", sample=True), [REWARDS["gres_mask_reward"]], ["gres_mask_reward"])


def test_mask_token_checks(tiny_models):
    from transformers import AddedToken, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["qwen2_5_vl"])
    checks.check_mask_tokens(processor)
    # Re-adding one mask token as special: TRL's skip_special_tokens decode would now erase it.
    processor.tokenizer.add_tokens([AddedToken("<|mt_0007|>", special=True, normalized=False)], special_tokens=True)
    with pytest.raises(ValueError, match="are special"):
        checks.check_mask_tokens(processor)


def test_resume_matches_uninterrupted_run(tmp_path, datasets_dir, tiny_models):
    common = [
        "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
        "--reward_funcs", VARYING, "--save_strategy", "steps", "--save_steps", "2",
        # 8 rows = 4 steps per epoch: the resume point lies inside the epoch (the next test crosses epochs).
        "--max_train_samples", "8",
    ]  # fmt: skip
    full = run(tmp_path / "full", *common, "--max_steps", "4")
    run(tmp_path / "part", *common, "--max_steps", "2")
    resumed = run(
        tmp_path / "part", *common, "--max_steps", "4", "--resume_from_checkpoint", str(tmp_path / "part/checkpoint-2")
    )
    assert resumed.state.global_step == full.state.global_step == 4

    def rewards_by_step(trainer):
        return {e["step"]: e["reward"] for e in trainer.state.log_history if "reward" in e}

    # The resumed run's history holds steps 1-2 from the checkpoint and 3-4 from the run itself.
    assert set(rewards_by_step(resumed)) == {1, 2, 3, 4}
    assert rewards_by_step(resumed) == pytest.approx(rewards_by_step(full))
    # Optimizer state at step 2 was restored (the step-4 Adam moments agree), and so do the weights.
    opt_full = torch.load(tmp_path / "full/checkpoint-4/optimizer.pt", weights_only=True)["state"]
    opt_resumed = torch.load(tmp_path / "part/checkpoint-4/optimizer.pt", weights_only=True)["state"]
    assert opt_full.keys() == opt_resumed.keys()
    for k in opt_full:
        torch.testing.assert_close(opt_resumed[k]["exp_avg"], opt_full[k]["exp_avg"])
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_resume_across_an_epoch_boundary_matches_uninterrupted_run(tmp_path, datasets_dir, tiny_models):
    """4 rows = 2 steps per epoch; 6 steps = 3 epochs; resumed at step 4 (start of epoch 3) and step 3 (inside
    epoch 2): the prompts of every step, the rewards, the optimizer state and the weights equal the uninterrupted run."""
    common = [
        "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", datasets_dir["gres"], "--reward_preset", "gres",
        "--reward_funcs", VARYING, "--save_strategy", "steps", "--save_steps", "1", "--max_train_samples", "4",
        "--log_completions", "true",
    ]  # fmt: skip
    full = run(tmp_path / "full", *common, "--max_steps", "6")
    run(tmp_path / "part", *common, "--max_steps", "3")
    resumed = run(tmp_path / "part", *common, "--max_steps", "6", "--resume_from_checkpoint", "true")
    assert resumed.state.global_step == full.state.global_step == 6

    def prompts_by_step(folder):
        import pandas as pd

        tables = sorted((folder / "completions").glob("completions_*.parquet"))
        rows = pd.concat([pd.read_parquet(t) for t in tables])
        return {int(s): sorted(map(str, g["prompt"])) for s, g in rows.groupby("step")}

    full_prompts, resumed_prompts = prompts_by_step(tmp_path / "full"), prompts_by_step(tmp_path / "part")
    assert set(full_prompts) == set(range(1, 7))
    assert all(resumed_prompts[s] == full_prompts[s] for s in range(4, 7))  # steps the resumed run generated
    assert full_prompts[1] != full_prompts[3] or full_prompts[2] != full_prompts[4]  # epochs really reshuffle

    def rewards_by_step(trainer):
        return {e["step"]: e["reward"] for e in trainer.state.log_history if "reward" in e}

    assert rewards_by_step(resumed) == pytest.approx(rewards_by_step(full))
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_rollouts_on_disk_are_what_the_rewards_scored(tmp_path, datasets_dir, tiny_models):
    """2 steps x 2 prompts x 2 completions: each record's text rescored by the rewards gives its logged components."""
    import json

    import rewards as reward_package
    from samtok_rl.rollouts import ROLLOUTS_FILE

    run(tmp_path, "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", datasets_dir["gres"], "--reward_preset",
        "gres", "--reward_weights", "1", "2", "1", "1", "--rollout_prompts", "2", "--max_completion_length", "24")  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / ROLLOUTS_FILE).read_text().splitlines()]
    assert [(r["step"], r["prompt_index"]) for r in records] == [(s, p) for s in (1, 2) for p in (0, 0, 1, 1)]
    for r in records:
        assert Path(r["image"]).is_file() and r["task"] == "gres" and r["solution"] and r["prompt"]
        rescored = {
            name: reward_package.REWARDS[name](None, [r["completion"]], solution=[r["solution"]], task=["gres"])[0]
            for name in reward_package.PRESETS["gres"]
        }
        assert r["rewards"] == pytest.approx(rescored)
        weights = dict(zip(reward_package.PRESETS["gres"], (1, 2, 1, 1)))
        assert r["reward"] == pytest.approx(sum(weights[n] * v for n, v in rescored.items()))
        assert isinstance(r["advantage"], float) and isinstance(r["codes"], list)
    # A group's advantages are its rewards centred on the group mean.
    for k in range(0, len(records), 2):
        a, b = records[k], records[k + 1]
        assert (a["advantage"] > b["advantage"]) == (a["reward"] > b["reward"]) or a["reward"] == b["reward"]


def test_a_sampled_vision_placeholder_ends_its_completion(tmp_path, datasets_dir, tiny_models):
    """The policy is pushed to sample `<|video_pad|>` (a bias on its logit): the completions are cut before it, the
    cut is logged, training goes on. (TRL's HF path suppresses only the image pad and its vLLM path nothing; a
    sampled image pad stopped a colocated vLLM run in the forward pass before this cut, see
    test_grpo_vllm.py::test_colocate_grpo_with_dynamic_sampling.)"""
    import json

    from transformers import AutoTokenizer

    video_pad = AutoTokenizer.from_pretrained(tiny_models["qwen2_5_vl"]).convert_tokens_to_ids("<|video_pad|>")
    bias = json.dumps({"sequence_bias": [[[video_pad], 6.0]]})
    trainer = run(tmp_path, "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", datasets_dir["gres"],
                  "--reward_funcs", VARYING, "--generation_kwargs", bias, "--max_completion_length", "24")  # fmt: skip
    cut = [e["completions/cut_at_vision_token"] for e in trainer.state.log_history if "reward" in e]
    assert len(cut) == 2 and max(cut) > 0, cut


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_backward_skips_the_frozen_vision_tower(kind, tiny_models):
    """With LoRA and gradient checkpointing, transformers hooks the vision tower's patch embedding to require grad:
    backward then recomputed every checkpointed vision block (seen at the 3B's real size). Frozen, the tower's output
    is detached: no vision block runs during backward, and the trained parameters get the same gradients."""
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import AutoProcessor
    from trl.data_utils import prepare_multimodal_messages

    from samtok_rl.prompts import conversation, gres_question

    processor = AutoProcessor.from_pretrained(tiny_models[kind])
    image = Image.fromarray(
        torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    )
    prompt = prepare_multimodal_messages(conversation(gres_question("the cup")), images=[image])
    batch = processor.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True,
                                          return_tensors="pt")  # fmt: skip

    def grads_and_vision_calls(detach: bool):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_pretrained(tiny_models[kind], dtype=torch.float32)
        if detach:
            loading.freeze_vision_tower(model)
        else:
            model.model.visual.requires_grad_(False)  # frozen the old way: parameters only
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        model.enable_input_require_grads()  # what TRL's PEFT path does with gradient checkpointing
        model.train()  # transformers checkpoints only in training mode, as the trainer runs it
        calls = {"backward": 0}
        in_backward = {"now": False}
        block = model.base_model.model.model.visual.blocks[0].attn  # the recompute runs the block's insides
        block.register_forward_hook(lambda *a: calls.__setitem__("backward", calls["backward"] + in_backward["now"]))
        loss = model(**batch).logits.float().pow(2).mean()
        in_backward["now"] = True
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return grads, calls["backward"]

    before, calls_before = grads_and_vision_calls(detach=False)
    after, calls_after = grads_and_vision_calls(detach=True)
    # The negative control. Qwen3-VL's vision model names no input-embedding layer, so transformers hooks nothing in
    # it and it was never affected; Qwen2.5-VL's names its patch embedding.
    if kind == "qwen2_5_vl":
        assert calls_before > 0, "without the detach, backward recomputes the vision blocks"
    else:
        assert calls_before == 0
    assert calls_after == 0
    assert before.keys() == after.keys() and all(torch.allclose(before[n], after[n]) for n in before)
