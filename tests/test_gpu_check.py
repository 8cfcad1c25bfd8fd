"""`benchmarks/gpu_check.py --smoke`: the GPU check's code path on CPU at tiny sizes, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_part_and_reports_finite_figures(tmp_path):
    out = tmp_path / "gpu_check_smoke.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["versions"]["trl"] and result["versions"]["commit"]
    tok, policy, ev = result["mask_tokenizer"], result["policy_qwen2_5_vl_3b"], result["eval"]
    for key in ("encode_masks_per_s", "decode_masks_per_s", "decode_batch_cold_masks_per_s",
                "decode_batch_warm_masks_per_s", "decode_one_by_one_masks_per_s"):  # fmt: skip
        assert math.isfinite(tok[key]) and tok[key] > 0, key
    assert tok["bf16_vs_fp32_identical_code_pairs"] == 1.0  # autocast is CUDA-only: on CPU both runs are fp32
    # The policy: the config's vocabulary plus the 514 mask tokens, 3 GRPO steps, each time component measured.
    config = json.loads((ROOT / "benchmarks/configs/qwen2_5_vl_3b_smoke.json").read_text())
    assert policy["embedding_rows"] == config["text_config"]["vocab_size"] + 514
    assert policy["steps"] == 3 and len(policy["step_time_s"]) == 3
    for key in ("generation_s_per_step", "textual_rewards_s_per_step", "iou_reward_s_per_step",
                "rollout_tokens_per_s"):  # fmt: skip
        assert math.isfinite(policy[key]) and policy[key] > 0, key
    assert ev["backend"] == "hf" and ev["samples"] > 0 and ev["samples_per_s"] > 0
    assert "| mask_tokenizer | decode_batch_warm_s |" in proc.stdout  # the printed table
    # Every part timed against its budget; the processor with the filled vocabulary is built once and loads fast.
    assert set(result["part_s"]) == {"mask_tokenizer", "policy_qwen2_5_vl_3b", "eval"}
    assert all(result["part_s"][p] <= result["budgets_s"][p] for p in result["part_s"]) and "overran" not in result


def test_gpu_check_stops_at_the_part_that_overruns_its_budget(tmp_path):
    """Injected fault: a 1-second budget for the mask tokenizer part. The check stops it, writes what it has, names
    the part and exits with status 3 instead of running on."""
    out = tmp_path / "overrun.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out),
                           "--budget", "mask_tokenizer=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["overran"] == {"part": "mask_tokenizer", "budget_s": 1.0}
    assert "policy_qwen2_5_vl_3b" not in result and "mask_tokenizer" not in result
    assert "gpu_check: part mask_tokenizer ran past its budget of 1 s and was stopped" in proc.stdout


def test_real_vocab_processor_loads_fast_with_the_specials_on_top(tmp_path):
    import importlib.util

    from transformers import AutoProcessor

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = module.real_vocab_processor("qwen2_5_vl", 151_936, tmp_path / "processor")
    tokenizer = AutoProcessor.from_pretrained(folder).tokenizer
    # The fillers are vocabulary entries, not added tokens (151 k added tokens took 18 s to load, these 0.2 s).
    assert len(tokenizer) == 151_936 and len(tokenizer.get_added_vocab()) == 14
    # Qwen's layout: the 14 specials are the top ids, <|endoftext|> first (151,643 in Qwen's own vocabulary).
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151_922
    assert tokenizer("hi <|image_pad|>").input_ids[-1] == tokenizer.convert_tokens_to_ids("<|image_pad|>") > 151_922
