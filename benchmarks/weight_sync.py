"""Bytes moved into vLLM per weight sync, with and without the frozen vision tower (`OnPolicyVLLMGeneration`).

    python benchmarks/weight_sync.py

The first sync sends every weight; later ones only the modules that own a trainable parameter
(`samtok_rl.vllm_rollouts.synced_module_prefixes`, the rule the sync applies). The tiny model is the one the vLLM
tests sync for real (`tests/test_vllm_on_policy.py` asserts the same byte counts on the engine); the 3B is built on
the meta device from its public configuration (`benchmarks/configs/qwen2_5_vl_3b.json`), no weights allocated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from samtok_rl.tiny import load_tiny_vlm
from samtok_rl.tokens import MASK_TOKENS
from samtok_rl.vllm_rollouts import synced_module_prefixes


def sync_bytes(model: torch.nn.Module, bytes_per_param: int) -> tuple[int, int, int]:
    """(parameters, bytes of the first sync, bytes of each later sync) with the vision tower frozen."""
    model.model.visual.requires_grad_(False)
    prefixes = synced_module_prefixes(model)
    total = later = 0
    for name, param in model.named_parameters():  # tied weights are yielded once, as TRL sends them
        total += param.numel()
        if name.rsplit(".", 1)[0] in prefixes:
            later += param.numel()
    return total, total * bytes_per_param, later * bytes_per_param


def main() -> None:
    rows = []
    tiny, _ = load_tiny_vlm("qwen2_5_vl")
    rows.append(("tiny Qwen2.5-VL (fp32, measured in the vLLM test)", *sync_bytes(tiny, 4)))
    raw = json.loads((Path(__file__).parent / "configs/qwen2_5_vl_3b.json").read_text())
    raw.pop("_comment")
    raw["text_config"]["vocab_size"] += len(MASK_TOKENS)
    config = Qwen2_5_VLConfig(**raw)
    with torch.device("meta"):
        big = Qwen2_5_VLForConditionalGeneration(config)
    for dtype, size in (("fp32 (recipes' dtype: float32)", 4), ("bf16", 2)):
        rows.append((f"Qwen2.5-VL-3B + 514 mask tokens, {dtype}, computed", *sync_bytes(big, size)))
    print("| model | parameters | first sync | later syncs | saved per sync |\n|---|---|---|---|---|")
    for name, params, first, later in rows:
        mb = 1e6 if params < 1e8 else 1e9
        unit = "MB" if mb == 1e6 else "GB"
        print(f"| {name} | {params / 1e6:,.2f} M | {first / mb:,.2f} {unit} | {later / mb:,.2f} {unit} | "
              f"{1 - later / first:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
