"""The miniature: synthetic shapes through prepare -> SFT -> GRPO -> eval, on a shortened run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samtok_rl import miniature
from samtok_rl.errors import UsageError
from samtok_rl.masks import decode_rle
from samtok_rl.prepare import load_prepared


ROOT = Path(__file__).resolve().parents[1]


def test_the_synthetic_set_is_a_grefcoco_folder_with_exact_masks(tmp_path):
    out = miniature.make_miniature(tmp_path, seed=3, train_images=12, val_images=4)
    refs = json.loads((out / "grefs(unc).json").read_text())
    instances = json.loads((out / "instances.json").read_text())
    assert {r["split"] for r in refs} == {"train", "val"} and len(refs) == 2 * 16
    anns = {a["id"]: a for a in instances["annotations"]}
    kinds = {"single": 0, "group": 0, "none": 0}
    for ref in refs:
        sentence = ref["sentences"][0]["sent"]
        image = np.asarray(Image.open(out / "images" / ref["file_name"]).convert("RGB")).astype(int)
        if ref["no_target"]:
            kinds["none"] += 1
            assert ref["ann_id"] == [-1]
            # It names a kind or a colour no image holds.
            assert miniature.ABSENT_KIND in sentence or miniature.ABSENT_COLOUR in sentence
            continue
        kinds["group" if sentence.startswith("all ") else "single"] += 1
        for ann_id in ref["ann_id"]:
            mask = decode_rle(anns[ann_id]["segmentation"])
            pixels = image[mask]
            # The GT mask covers exactly the pixels of one painted shape: one colour, named by the expression.
            assert mask.sum() == anns[ann_id]["area"] > 0 and (pixels == pixels[0]).all()
            colour = next(name for name, rgb in miniature.COLOURS.items() if tuple(pixels[0]) == rgb)
            kind = next(k for k in miniature.KINDS if k in sentence) if "shapes" not in sentence else None
            assert colour in sentence or kind is not None
            if kind is not None:  # the mask's shape: a square fills its box, a circle or a triangle does not
                x, y, w, h = anns[ann_id]["bbox"]
                fill = mask.sum() / (w * h)
                assert {"square": fill > 0.99, "circle": 0.7 < fill < 0.85, "triangle": 0.4 < fill < 0.6}[kind]
    assert all(kinds.values()), kinds  # every expression kind occurs
    # The same seed writes the same set.
    again = miniature.make_miniature(tmp_path / "again", seed=3, train_images=12, val_images=4)
    assert json.loads((again / "grefs(unc).json").read_text()) == refs


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("sft_fraction", "1.0", "sft_fraction"),
        ("grpo_steps", "0", "grpo_steps"),
        ("val_images", "0", "val_images"),
        ("held_out", "purple circle", "held_out 'purple circle'"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, flag, value, message):
    with pytest.raises(UsageError, match=message):
        miniature.main(["--output_dir", str(tmp_path / "run"), f"--{flag}", value])
    assert not (tmp_path / "run").exists()


def test_a_shortened_miniature_runs_end_to_end_with_finite_metrics(tmp_path, capsys):
    out = tmp_path / "mini"
    results = miniature.main(["--output_dir", str(out), "--train_images", "20", "--val_images", "6",
                              "--sft_steps", "40", "--grpo_steps", "2", "--seed", "1"])  # fmt: skip
    for arm in ("sft", "grpo"):
        assert set(results[arm]) == {*miniature.TABLE_METRICS, "exact by kind"}
        assert all(math.isfinite(results[arm][k]) for k in miniature.TABLE_METRICS), results[arm]
        # The eval went through `samtok-rl eval`: one prediction per val expression, each counted in one kind.
        lines = (out / f"eval_{arm}" / "predictions_val.jsonl").read_text().splitlines()
        assert len(lines) == 2 * 6
        by_kind = results[arm]["exact by kind"]
        assert sum(rows for _, rows in by_kind.values()) == 12
        assert sum(right for right, _ in by_kind.values()) == round(results[arm]["exact codes"] * 12 / 100)
    # The warm start's part holds no single-target row asking for a held-out type; the RL part keeps them.
    train, sft, rl = (load_prepared(out / "prepared" / name) for name in ("train", "sft", "rl"))
    held = {f"the {name}" for name in miniature.HELD_OUT}
    n_sft = int(len(train) * 0.6)
    dropped = sum(e in held for e in train["expression"][:n_sft])
    assert dropped > 0 and len(sft) == n_sft - dropped and not held & set(sft["expression"])
    assert rl["expression"] == train["expression"][n_sft:]
    # GRPO ran its steps on the warm start (with 40 SFT steps its groups may all tie, so the weights may not move) and
    # the printed table compares the two evaluations.
    logged = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "reward" in e] == [1, 2]
    assert json.loads((out / "grpo" / "samtok_run.json").read_text())["rewards"][:2] == [
        "format_reward",
        "gres_mask_reward",
    ]
    # GRPO evaluated val (decoded GT) at step 0 and at the end; its last evaluation is `samtok-rl eval` of the saved
    # model, metric by metric, and the miniature's own decoded-GT scoring of its final eval agrees with it.
    curve = results["grpo_curve"]
    assert curve["steps"] == [0, 2] and curve["equal"], curve
    assert curve["gIoU"][-1] == pytest.approx(results["grpo"]["gIoU (decoded GT)"], abs=1e-9)
    assert "eval split: benchmark metrics" in Path(results["report"]).read_text()
    table = capsys.readouterr().out
    assert "val gIoU (decoded GT) during GRPO, by step: 0 " in table and "equal, metric by metric" in table
    assert "SFT start" in table and "after GRPO" in table
    for key in miniature.TABLE_METRICS:
        assert key.replace("_", "-") in table
    for kind in miniature.ROW_KINDS:
        right, rows = results["grpo"]["exact by kind"][kind]
        assert f"exact: {kind}" in table and f"{right}/{rows}" in table
    assert json.loads((out / "results.json").read_text())["grpo"] == results["grpo"]

    # benchmarks/miniature.py reads the same run back: its table and its training curves.
    spec = importlib.util.spec_from_file_location("bench_miniature", ROOT / "benchmarks" / "miniature.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = bench.summary({1: results})
    before, rows = results["sft"]["exact by kind"]["held-out single"]
    after = results["grpo"]["exact by kind"]["held-out single"][0]
    assert f"| exact: held-out single (all seeds) | {before}/{rows} | {after}/{rows} |" in text
    assert f"| 1 | {results['sft']['gIoU (decoded GT)']:.1f} -> {results['grpo']['gIoU (decoded GT)']:.1f} |" in text
    assert results["held_out"] == list(miniature.HELD_OUT)
    png = bench.training_curves({1: out}, {1: results["held_out"]}, tmp_path / "curves.png")
    assert png == tmp_path / "curves.png"
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[1] > 1000 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn lines, not blank
