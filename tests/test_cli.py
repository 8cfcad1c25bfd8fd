"""One configuration style: every command takes `--config FILE.yaml` (and flags), and its help says so first."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from test_faults import one_line_error

from samtok_rl import cli, evaluate, grpo, prepare
from samtok_rl.masks import decode_rle


ROOT = Path(__file__).resolve().parents[1]
PREPARE_RECIPES = sorted((ROOT / "recipes" / "prepare").glob("*.yaml"))
EVAL_RECIPES = sorted((ROOT / "recipes" / "eval").glob("*.yaml"))


@pytest.mark.parametrize("recipe", PREPARE_RECIPES, ids=lambda p: p.name)
def test_prepare_recipes_parse(recipe):
    (config,) = prepare.make_parser().parse_args_and_config(["--config", str(recipe)])
    assert config == prepare.PrepareConfig(**yaml.safe_load(recipe.read_text()))


@pytest.mark.parametrize("recipe", EVAL_RECIPES, ids=lambda p: p.name)
def test_eval_recipes_parse(recipe):
    (config,) = evaluate.make_parser().parse_args_and_config(["--config", str(recipe)])
    assert config == evaluate.EvalConfig(**yaml.safe_load(recipe.read_text()))


def test_prepare_then_eval_from_yaml(tmp_path, capsys):
    """The sample recipes run end to end through the CLI: prepare writes the dataset, eval its metrics."""
    prepared = tmp_path / "prepared"
    assert cli.main(["prepare", "--config", str(ROOT / "recipes/prepare/sample_gres.yaml"), "--output_dir", str(prepared),
                     "--split", "val", "--no_progress"]) == 0  # fmt: skip
    rows = prepare.load_prepared(prepared)
    assert len(rows) == 4 and all(decode_rle(m).any() for r in rows for m in r["gt_masks"])

    out = tmp_path / "eval"
    assert cli.main(["eval", "--config", str(ROOT / "recipes/eval/sample_gres_tiny.yaml"), "--output_dir", str(out),
                     "--limit", "2", "--no_progress"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["max_pixels"] == 12544 and metrics["run"]["generated"] == 2
    assert "gIoU" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["prepare", "train", "eval", "add-mask-tokens"])
def test_help_is_the_commands_own_and_starts_with_config(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: samtok-rl {command} [--config FILE.yaml]")
    options = [line.strip() for line in lines if line.strip().startswith("--")]
    assert options[0].startswith("--config FILE.yaml")
    assert (
        len(lines) < 150
    )  # readable: samtok-rl's own fields (about 30), not TRL's hundreds (--help_all: 1,000+ lines)


def test_train_help_all_lists_trls_fields(capsys):
    with pytest.raises(SystemExit):
        grpo.parse_args(["--help_all"])
    assert "--learning_rate" in capsys.readouterr().out


# -- what the user got wrong is one line, exit status 2, before any work ------------------------------------------------

TRAIN = ["train", "--dataset", "sample:gres", "--reward_preset", "gres", "--mask_tokenizer", "micro", "--use_cpu",
         "--model_name_or_path", "tiny:qwen2_5_vl", "--dry_run"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [("dataset: sample:gres\nnum_generation: 4\n",
      "{path}: unknown key 'num_generation' (did you mean num_generations?): not a field of this command"),
     ("dataset: sample:gres\nnum_generation: 4\nlearnin_rate: 1.0\nzzz: 1\n",
      "{path}: unknown keys 'num_generation' (did you mean num_generations?); 'learnin_rate' (did you mean "
      "learning_rate?); 'zzz': not a field of this command"),
     ("- dataset: sample:gres\n- beta: 0.0\n", "{path}: the top level must be a mapping of field: value, got a list"),
     ("", "{path}: the top level must be a mapping of field: value, got nothing"),
     ("dataset: [sample:gres\nbeta: 0.0\n", "{path}, line 2, column 5: YAML syntax error: expected ',' or ']', but "
      "got ':'"),
     ("dataset: sample:gres\nreward_preset: gres\n  beta: 0.0\n",
      "{path}, line 3, column 7: YAML syntax error: mapping values are not allowed here"),
     ("env: [A, B]\n", "{path}: `env` must be a mapping of VARIABLE: value")],
    ids=["misspelled-key", "three-unknown-keys", "list", "empty", "unclosed-bracket", "bad-indent", "env-list"],
)  # fmt: skip
def test_a_bad_config_file_is_named_in_one_line(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    err = one_line_error(capsys, ["train", "--config", str(recipe), "--output_dir", str(tmp_path / "run")])
    assert err == f"samtok-rl train: error: {message.format(path=recipe)}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["prepare", "eval", "inspect"])
def test_every_command_reads_its_config_file_the_same_way(tmp_path, capsys, command):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: gres\nsampel: true\n")
    err = one_line_error(capsys, [command, "--config", str(recipe)])
    assert f"error: {recipe}: unknown key" in err and "not a field of this command" in err
    if command != "inspect":  # inspect has neither `task` nor a `sample` to suggest
        assert f"error: {recipe}: unknown key 'sampel' (did you mean sample?)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--config", "{tmp}/no/such.yaml"], "--config '{tmp}/no/such.yaml': no such file"),
     (["--config", "{tmp}"], "--config '{tmp}': is a folder"),
     (["--config"], "--config needs a file: --config FILE.yaml"),
     (["--dataset", "sample:gres", "--num_generatoins", "4"],
      "unknown flag --num_generatoins (did you mean --num_generations?)"),
     (["--dataset", "sample:gres", "--bogus", "3", "--zzz"], "unknown flags --bogus, --zzz"),
     (["--num_generations", "four"], "argument --num_generations/--num-generations: invalid int value: 'four'"),
     (["--num_generation", "4"],
      "ambiguous option: --num_generation could match --num_generations, --num_generations_eval")],
    ids=["missing-file", "folder", "no-file", "misspelled-flag", "unknown-flags", "bad-int", "ambiguous-flag"],
)  # fmt: skip
def test_a_bad_config_path_or_flag_is_named_in_one_line(tmp_path, capsys, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    err = one_line_error(capsys, ["train", *args, "--output_dir", str(tmp_path / "run")])
    assert err == f"samtok-rl train: error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "run").exists()


def test_config_equals_file_is_read_as_the_file(tmp_path, capsys):
    """`--config=FILE` is the same as `--config FILE` (TRL looks for the separate form only)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sampel: true\n")
    assert f"{recipe}: unknown key 'sampel'" in one_line_error(capsys, ["eval", f"--config={recipe}"])


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--num_generations", "1"],
      "num_generations must be >= 2, got 1: GRPO scores each completion against the others of its prompt's group"),
     (["--per_device_train_batch_size", "3", "--num_generations", "2"],
      "the generation batch of 3 completions (per_device_train_batch_size 3 x 1 process(es) x "
      "gradient_accumulation_steps 1) is not a multiple of num_generations 2: each prompt's group must be generated "
      "whole. Set per_device_train_batch_size to a multiple of 2 (e.g. 4), or num_generations to a divisor of 3"),
     (["--per_device_train_batch_size", "2", "--steps_per_generation", "3", "--num_generations", "4"],
      "the generation batch of 6 completions (per_device_train_batch_size 2 x 1 process(es) x steps_per_generation "
      "3) is not a multiple of num_generations 4: each prompt's group must be generated whole. Set "
      "per_device_train_batch_size to a multiple of 4 (e.g. 4), or num_generations to a divisor of 6"),
     (["--per_device_train_batch_size", "2", "--generation_batch_size", "6", "--num_generations", "4"],
      "the generation batch of 6 completions (generation_batch_size) is not a multiple of num_generations 4: each "
      "prompt's group must be generated whole. Set generation_batch_size to a multiple of 4, or num_generations to a "
      "divisor of 6"),
     (["--generation_batch_size", "8", "--steps_per_generation", "2"],  # TRL's own check, in one line
      "'generation_batch_size' and 'steps_per_generation' can not be both configured at the same time"),
     (["--max_train_samples", "0"], "max_train_samples must be >= 1 (or unset for every row), got 0")],
    ids=["one-generation", "batch-3-groups-of-2", "steps-per-generation", "generation-batch-size", "trl-both-set",
         "no-samples"],
)  # fmt: skip
def test_batch_arithmetic_is_refused_before_trl_builds_its_config(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    err = one_line_error(capsys, [*TRAIN, "--output_dir", str(tmp_path / "run"), *args])
    assert err == f"samtok-rl train: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_a_reward_plugin_that_is_not_a_function(tmp_path, capsys):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text("NAME = 3\n")
    err = one_line_error(capsys, [*TRAIN, "--output_dir", str(tmp_path / "run"), "--reward_funcs", f"{plugin}:NAME"])
    assert err == f"samtok-rl train: error: reward '{plugin}:NAME' is int 3, not a function\n"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_use_vllm_without_vllm_installed(tmp_path, capsys, caplog, monkeypatch, mode):
    """Refused before the model loads; a `--dry_run` (a recipe checked where vLLM is not installed) only warns."""
    message = (
        f"use_vllm is true (vllm_mode {mode}) but vllm is not installed: "
        'pip install -e ".[vllm]", or set use_vllm: false to generate with transformers'
    )
    argv = [*TRAIN, "--output_dir", str(tmp_path / "run"), "--use_vllm", "true", "--vllm_mode", mode]
    assert cli.main(argv) == 0
    assert f"{message} (a dry run goes on; training would stop here)" in caplog.text

    loads = []
    monkeypatch.setattr(grpo, "load_processor", lambda *args: loads.append(args))
    err = one_line_error(capsys, [arg for arg in argv if arg != "--dry_run"])
    assert err == f"samtok-rl train: error: {message}\n"
    assert not loads and not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_eval_with_the_vllm_backend_without_vllm_installed(tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["eval", "--model", "tiny:qwen2_5_vl", "--task", "gres", "--sample", "--backend", "vllm",
                     "--mask_tokenizer", "micro", "--output_dir", str(tmp_path / "eval")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'backend vllm: vllm is not installed: pip install -e ".[vllm]"' in err, err
    assert not (tmp_path / "eval").exists()
