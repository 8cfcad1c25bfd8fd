"""`samtok-rl filter` on the bundled sample with the demo's warm-started tiny VLM (CPU, HF sampling)."""

from __future__ import annotations

import json

import pytest
import torch

import rewards
from samtok_rl import demo, grpo
from samtok_rl.errors import UsageError
from samtok_rl.filter import SCORES_FILE, FilterConfig, filter_dataset
from samtok_rl.prepare import load_prepared, write_prepared


@pytest.fixture(scope="module")
def warm():
    # The demo's warm start (cached; shared with test_demo and `make demo`): its samples differ in reward.
    return demo.warm_start_model(*grpo.parse_args(["--config", str(demo.DEMO_RECIPE)]), demo.WARM_START_STEPS,
                                 demo.WARM_START_LR)  # fmt: skip


class NoGeneration:
    def strip_tokens(self):
        return []

    def sample(self, *args, **kwargs):
        raise AssertionError("a finished filter run generated again")

    def close(self):
        pass


def config(out, warm, **kw):
    return FilterConfig(output_dir=str(out), recipe=str(demo.DEMO_RECIPE), model=str(warm), num_generations=4,
                        max_new_tokens=96, max_pixels=12544, progress=False, **kw)  # fmt: skip


def test_filter_scores_every_prompt_and_keeps_the_informative_ones(tmp_path, warm):
    result = filter_dataset(config(tmp_path, warm))
    records = [json.loads(line) for line in (tmp_path / SCORES_FILE).read_text().splitlines()]
    assert result["rows"] == result["generated"] == len(records) == 15
    specs = [*rewards.PRESETS["gres"], "mask_iou_reward"]  # the demo recipe's rewards
    iou = rewards.get_reward_funcs(["mask_iou_reward"], mask_tokenizer="micro")[0]
    scored = load_prepared(tmp_path / "scored")
    for record, row in zip(records, scored):
        assert len(record["texts"]) == 4 and list(record["rewards"]) == [
            "format_reward", "gres_mask_reward", "repetition_think_reward", "repetition_answer_reward",
            "mask_iou_reward"]  # fmt: skip
        # The stored rewards are what the rewards say of the stored texts.
        for name in specs[:-1]:
            again = rewards.REWARDS[name](None, record["texts"], solution=[row["solution"]] * 4, task=["gres"] * 4)
            assert record["rewards"][name] == pytest.approx(again)
        from samtok_rl.files import open_rgb

        image = open_rgb(row["image"])
        assert record["rewards"]["mask_iou_reward"] == pytest.approx(
            iou(None, record["texts"], gt_masks=[row["gt_masks"]] * 4, image=[image] * 4), abs=1e-6)  # fmt: skip
        totals = torch.tensor(list(record["rewards"].values())).nansum(dim=0)
        assert record["mean"] == pytest.approx(totals.mean().item(), abs=1e-5)
        assert record["std"] == pytest.approx(totals.std().item(), abs=1e-5)
        assert record["pass_rate"] == sum(v == 1.0 for v in record["rewards"]["gres_mask_reward"]) / 4
    # The scored folder carries the statistics; the filtered one holds the rows with reward spread, and trains.
    table = (tmp_path / "scored" / "data").glob("*.parquet")
    import pyarrow.parquet as pq

    columns = pq.read_table(next(table)).column_names
    assert {"reward_mean", "reward_std", "pass_rate"} <= set(columns)
    kept = [r["row"] for r in records if r["std"] > 1e-4]
    assert result["kept"] == len(kept) and 0 < len(kept) < 15 or result["kept"] == len(kept) == 15
    filtered = load_prepared(tmp_path / "filtered")
    assert [r["solution"] for r in filtered] == [scored[i]["solution"] for i in kept]

    # A second run generates nothing, and gives the same folders.
    again = filter_dataset(config(tmp_path, warm), generator=NoGeneration())
    assert again["generated"] == 0 and again["kept"] == result["kept"]


def test_filter_resumes_after_an_interruption_and_refuses_other_settings(tmp_path, warm):
    first = filter_dataset(config(tmp_path, warm, max_samples=3))
    lines = (tmp_path / SCORES_FILE).read_text().splitlines()
    # Interrupted mid-write: the last prompt's line is torn.
    (tmp_path / SCORES_FILE).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    resumed = filter_dataset(config(tmp_path, warm, max_samples=3))
    assert first["generated"] == 3 and resumed["generated"] == 1
    assert filter_dataset(config(tmp_path, warm, max_samples=3), generator=NoGeneration())["generated"] == 0
    with pytest.raises(UsageError, match="other settings .*temperature"):
        filter_dataset(config(tmp_path, warm, max_samples=3, temperature=0.5))


def test_write_prepared_writes_only_the_selected_rows(tmp_path, datasets_dir):
    source = load_prepared(datasets_dir["gres"])
    write_prepared(source.select([3, 1]), tmp_path / "two", "gres", {"tokenizer": "fixed"})
    assert [r["solution"] for r in load_prepared(tmp_path / "two")] == [source[3]["solution"], source[1]["solution"]]


def test_filter_reads_an_authors_parquet_file(tmp_path, warm, authors_files, monkeypatch):
    """`dataset:` may be an authors' RL parquet file (with `image_root`): its rows are scored, in file order."""
    import pyarrow.parquet as pq

    from samtok_rl.data import sample_paths

    monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
    result = filter_dataset(config(tmp_path / "out", warm, dataset=authors_files["gres"],
                                   image_root=str(sample_paths().images), max_samples=3))  # fmt: skip
    assert result["rows"] == result["generated"] == 3
    answers = pq.read_table(authors_files["gres"], columns=["answer"]).column("answer").to_pylist()[:3]
    assert [r["solution"] for r in load_prepared(tmp_path / "out" / "scored")] == answers
