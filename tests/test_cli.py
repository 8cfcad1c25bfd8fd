"""One configuration style: every command takes `--config FILE.yaml` (and flags), and its help says so first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

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
    assert len(lines) < 120  # readable: samtok-rl's own fields, not TRL's hundreds


def test_train_help_all_lists_trls_fields(capsys):
    with pytest.raises(SystemExit):
        grpo.parse_args(["--help_all"])
    assert "--learning_rate" in capsys.readouterr().out
