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
