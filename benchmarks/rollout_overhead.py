"""What the on-policy rollout path costs over vLLM itself: `OnPolicyVLLMGeneration.generate` against a bare
`LLM.generate` on the same prompts, images and sampling settings, on one colocated vLLM-CPU engine.

    .venv-vllm/bin/python benchmarks/rollout_overhead.py      # needs the vLLM environment (`make test-vllm` builds it)

The engine is the tiny Qwen2.5-VL of the vLLM tests in fp32 (its own forward is cheap, so any per-call overhead of
the wrapper shows up at its largest). Both paths sample `max_tokens` tokens with EOS ignored, so they produce the
same number of tokens; the table gives completion tokens/s, best of `--repeats`, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.data_utils import prepare_multimodal_messages

from samtok_rl.prompts import conversation, gres_question
from samtok_rl.tiny import build_tiny_vlm
from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration, collapse_image_runs


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MIN_PIXELS, MAX_PIXELS = 28 * 28, 64 * 28 * 28


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from vllm import SamplingParams

    path = str(build_tiny_vlm("qwen2_5_vl"))
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    processor.image_processor.size["shortest_edge"] = MIN_PIXELS
    processor.image_processor.size["longest_edge"] = MAX_PIXELS
    generation = OnPolicyVLLMGeneration(
        model=model, accelerator=Accelerator(cpu=True), processing_class=processor, mode="colocate",
        gpu_memory_utilization=0.3, max_model_length=1024, max_num_seqs=args.prompts * args.generations,
        model_impl="vllm", temperature=1.0, max_completion_length=args.tokens, logprobs=0,
        generation_kwargs={"ignore_eos": True},
        engine_kwargs={"dtype": "float32", "mm_processor_kwargs": {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (60 + 20 * k, 80 + 10 * k, 3), dtype=np.uint8))
              for k in range(args.prompts)]  # fmt: skip
    prompts = []
    for image in images:
        messages = prepare_multimodal_messages(conversation(gres_question("the left square")), images=[image])
        batch = processor.apply_chat_template([messages], add_generation_prompt=True, tokenize=True, return_dict=True)
        prompts.append(list(batch["input_ids"][0]))
    # Colocated, TRL asks vLLM for one completion per row: the trainer repeats each prompt num_generations times.
    prompts = [ids for ids in prompts for _ in range(args.generations)]
    images = [image for image in images for _ in range(args.generations)]
    per_image = [[image] for image in images]
    bare_inputs = [
        {"prompt_token_ids": collapse_image_runs(ids, processor.image_token_id), "multi_modal_data": {"image": image}}
        for ids, image in zip(prompts, images)
    ]
    # The sampling settings TRL builds in colocate mode (`VLLMGeneration.generate`), so only the wrapper differs.
    params = SamplingParams(n=1, repetition_penalty=1.0, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                            max_tokens=args.tokens, logprobs=0, ignore_eos=True)  # fmt: skip

    def wrapped() -> int:
        _, completions, _, _ = generation.generate(prompts, per_image, args.generations)
        return sum(len(c) for c in completions)

    def bare() -> int:
        outputs = generation.llm.generate(bare_inputs, params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outputs for o in out.outputs)

    paths = {"bare vLLM LLM.generate": bare, "OnPolicyVLLMGeneration.generate": wrapped}
    rows = {name: (0, 0.0) for name in paths}
    for fn in paths.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # the two paths alternate, so a busy moment of the machine hits both alike
        for name, fn in paths.items():
            start = time.perf_counter()
            tokens = fn()
            rows[name] = (tokens, max(rows[name][1], tokens / (time.perf_counter() - start)))
    base = rows["bare vLLM LLM.generate"][1]
    print(f"{args.prompts} prompts x {args.generations} completions x {args.tokens} tokens, best of {args.repeats}\n")
    print("| path | tokens per call | tokens/s | vs bare |\n|---|---:|---:|---:|")
    for name, (tokens, rate) in rows.items():
        print(f"| {name} | {tokens} | {rate:,.0f} | {rate / base:.3f}x |")
    generation.llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
