"""The GPU check at the released models' size: one command, random weights, no network.

    python benchmarks/gpu_check.py                 # one CUDA GPU, within about 6 minutes; `make gpu-check`
    python benchmarks/gpu_check.py --smoke         # the same code path on CPU with tiny sizes (a test in `make test`)

1. The mask tokenizer at hiera-L size (SAM 2.1 hiera-L + mask encoder + 2 x 256 codes), saved in the released
   checkpoint layout and loaded back the way a SAMTok folder is: encode and decode masks/s; `decode_batch` on a
   GRPO-shaped batch (64 distinct images x 8 completions x 2 masks) with a cold and a warm image-feature cache, beside
   decoding masks one call each; peak memory; and how far the CUDA bf16 autocast (the original's) moves codes and
   masks from fp32 on the same inputs (the golden equivalence is proven in fp32 only).
2. A Qwen2.5-VL-3B-sized policy (`benchmarks/configs/qwen2_5_vl_3b.json`, the public configuration; the vocabulary
   filled to 151,936 rows, then the 514 mask tokens added) in bf16: 3 GRPO steps on the bundled GRES sample with the
   GRES preset plus the IoU reward and vLLM colocated: time per step split into generation, rewards (textual and IoU
   separately) and the rest (log-probabilities and optimisation); rollout tokens/s; peak memory.
3. `samtok-rl eval` with the vLLM backend on the bundled sample with that policy: samples/s.
4. With `--qwen3`: step 2 at Qwen3-VL-4B size (`benchmarks/configs/qwen3_vl_4b.json`).

Parts 2-4 run in child processes (as a user launches them), so each one's GPU memory is returned before the next.
Writes one JSON (every figure, the GPU, the versions and the commit) and prints a table. `--smoke` swaps the sizes
for tiny ones (the micro mask tokenizer, `benchmarks/configs/*_smoke.json`, HF generation instead of vLLM) and runs
on CPU, so the check cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "configs"
RESULTS = Path(__file__).parent / "results"

# (full, smoke) sizes of each part.
TOKENIZER = {"full": {"config": "configs/sam2.1/sam2.1_hiera_l.yaml", "images": 64, "completions": 8, "masks": 2,
                      "size": (480, 640), "alone": 32},
             "smoke": {"config": "sam2_micro.yaml", "images": 4, "completions": 2, "masks": 2, "size": (96, 128),
                       "alone": 4}}  # fmt: skip
POLICY = {"full": {"prompts": 2, "generations": 8, "completion": 256, "vocab": 151_936},
          "smoke": {"prompts": 2, "generations": 2, "completion": 16, "vocab": 1_200}}  # fmt: skip


# Seconds each part may take (full: one H200, from the sizes above; smoke: a loaded 2-core CPU). A part that runs
# past its budget is stopped: the check writes what it has, names the part, and exits with status 3.
BUDGETS = {"full": {"mask_tokenizer": 75, "policy_qwen2_5_vl_3b": 240, "eval": 120, "policy_qwen3_vl_4b": 240},
           "smoke": {"mask_tokenizer": 300, "policy_qwen2_5_vl_3b": 600, "eval": 300, "policy_qwen3_vl_4b": 600}}  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


# ------------------------------------------------------------------------------------------ 1. the mask tokenizer


def _images_and_masks(count: int, size: tuple[int, int], masks: int, seed: int = 0):
    """Distinct RGB images (smooth colour fields plus noise) and `masks` elliptical masks on each."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images, all_masks = [], []
    for _ in range(count):
        base = rng.integers(0, 255, 3) * (xx[..., None] / w) + rng.integers(0, 255, 3) * (yy[..., None] / h)
        images.append(np.clip(base / 2 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
        shapes = []
        for _ in range(masks):
            cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
            ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
            shapes.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        all_masks.append(np.stack(shapes))
    return images, all_masks


def check_mask_tokenizer(mode: str, device: str, folder: Path) -> tuple[dict, Path]:
    """Part 1. Returns the figures and the saved tokenizer (the policy parts decode with it)."""
    from samtok_rl.mask_tokenizer import MaskTokenizer, build_mask_tokenizer
    from samtok_rl.mask_tokenizer.micro import _make_random_weights_informative

    size = TOKENIZER[mode]
    torch.manual_seed(0)
    fresh = MaskTokenizer.from_config(size["config"])
    # Random weights made informative (the golden data's recipe), so codes and masks are not all alike.
    _make_random_weights_informative(fresh, torch.Generator().manual_seed(1))
    saved = fresh.save_pretrained(folder / "mask_tokenizer")  # the released layout: <folder>/mask_tokenizer_256x2.pth
    del fresh
    if mode == "full":
        tok = build_mask_tokenizer(saved.parent, device=device, drop_memory_modules=True)  # as a SAMTok folder
    else:
        tok = build_mask_tokenizer(
            sam2_config=size["config"], checkpoint=saved, device=device, drop_memory_modules=True
        )
    images, masks = _images_and_masks(size["images"], size["size"], size["masks"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    n_masks = sum(len(m) for m in masks)
    codes, t_encode = _timed(lambda: [tok.encode(i, m) for i, m in zip(images, masks)], device)
    _, t_decode = _timed(lambda: [tok.decode(i, c) for i, c in zip(images, codes)], device)
    # A GRPO batch: every image's completions each write its masks (codes drawn at random).
    rng = np.random.default_rng(1)
    items = [(i, rng.integers(0, 256, (size["completions"] * size["masks"], 2))) for i in images]
    batch_masks = sum(len(c) for _, c in items)
    tok.clear_cache()
    _, t_cold = _timed(lambda: tok.decode_batch(items), device)
    _, t_warm = _timed(lambda: tok.decode_batch(items), device)
    alone = [(i, c[k : k + 1]) for i, c in items for k in range(len(c))][: size["alone"]]

    def one_by_one():
        for image, code in alone:
            tok.clear_cache()  # each call on its own: its image encoded again, as without a batch or a cache
            tok.decode(image, code)

    _, t_alone = _timed(one_by_one, device)
    peak = _peak_gb(device)

    # bf16 autocast (the original's, on CUDA) against fp32 on the same inputs.
    tok.clear_cache()
    codes_bf16 = [tok.encode(i, m) for i, m in zip(images, masks)]
    decoded_bf16 = tok.decode_batch(items)
    tok._autocast = contextlib.nullcontext  # fp32: the instance's autocast switched off
    tok.clear_cache()
    codes_fp32 = [tok.encode(i, m) for i, m in zip(images, masks)]
    decoded_fp32 = tok.decode_batch(items)
    same_codes = np.mean([(a == b).all(axis=1).mean() for a, b in zip(codes_bf16, codes_fp32)])
    differ = sum(int((a != b).sum()) for a, b in zip(decoded_bf16, decoded_fp32))
    mask_pixels = sum(int((a | b).sum()) for a, b in zip(decoded_bf16, decoded_fp32))
    return {
        "config": size["config"],
        "parameters_M": sum(p.numel() for p in tok.parameters()) / 1e6,
        "encode_masks_per_s": n_masks / t_encode,
        "decode_masks_per_s": n_masks / t_decode,
        "grpo_batch": f"{size['images']} images x {size['completions']} completions x {size['masks']} masks",
        "decode_batch_cold_s": t_cold,
        "decode_batch_warm_s": t_warm,
        "decode_batch_cold_masks_per_s": batch_masks / t_cold,
        "decode_batch_warm_masks_per_s": batch_masks / t_warm,
        "decode_one_by_one_masks_per_s": len(alone) / t_alone,
        "peak_memory_GB": peak,
        "bf16_vs_fp32_identical_code_pairs": float(same_codes),
        "bf16_vs_fp32_differing_share_of_mask_pixels": differ / max(mask_pixels, 1),
        "bf16_autocast_active": device.startswith("cuda"),
    }, saved


# --------------------------------------------------------------------------------------- 2. the policy, 3. eval


def real_vocab_processor(kind: str, vocab: int, folder: Path) -> Path:
    """The tiny processor with its tokenizer filled to `vocab` entries, saved to `folder` once and reused by every
    part (trainer, vLLM, eval). The filler entries go into the BPE model's own vocabulary (`tokenizer.json`), not in
    as 151 k added tokens: a tokenizer with that many added tokens took 18 s to load, each time one was loaded."""
    from transformers import AutoProcessor

    from samtok_rl.tiny import build_tiny_processor

    if (folder / "tokenizer.json").is_file():
        return folder
    processor = build_tiny_processor(kind)
    # The real processor's pixel bounds (the tiny one keeps images at a few tokens).
    processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 1_605_632}
    processor.save_pretrained(folder)
    state = json.loads((folder / "tokenizer.json").read_text())
    # transformers numbers the added (special) tokens after the model's vocabulary when it loads: the fillers go
    # between the two, so the specials end at the top as in Qwen's own vocabulary (<|im_end|> 151645 there).
    start, added = len(state["model"]["vocab"]), state["added_tokens"]
    state["model"]["vocab"].update({f"<|fill_{k}|>": start + k for k in range(vocab - len(added) - start)})
    for k, token in enumerate(added):
        token["id"] = vocab - len(added) + k
    (folder / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
    tokenizer = AutoProcessor.from_pretrained(folder).tokenizer
    assert len(tokenizer) == vocab and tokenizer.convert_tokens_to_ids("<|endoftext|>") == vocab - len(added)
    return folder


def build_policy(
    config_file: Path, folder: Path, vocab: int, device: str, dtype=None, processor_dir: Path | None = None
) -> Path:
    """A random policy of `config_file`'s sizes with the tiny BPE tokenizer filled to `vocab` rows
    (`real_vocab_processor`, built once under `processor_dir`), then the 514 mask tokens added as SAMTok does: the
    embedding has the real number of rows. `dtype`: default bf16 on CUDA, fp32 on CPU."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from samtok_rl.tokens import add_mask_tokens

    raw = json.loads(config_file.read_text())
    raw.pop("_comment", None)
    kind = raw["model_type"]
    processor_dir = processor_dir or folder.parent / f"processor_{kind}_{vocab}"
    processor = AutoProcessor.from_pretrained(real_vocab_processor(kind, vocab, processor_dir))
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}  # fmt: skip
    raw.update(ids, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    raw["text_config"].update(vocab_size=vocab, eos_token_id=raw["eos_token_id"], pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(**raw)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    add_mask_tokens(processor, model)
    model.generation_config.eos_token_id = [raw["eos_token_id"], tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class TimedTrainer:
    """Mixed into `SamtokGRPOTrainer`: wall time of generation, of each reward, and of the whole scoring call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings = {"generation": 0.0, "scoring_total": 0.0}
        self.reward_funcs = [self._timed_reward(f) for f in self.reward_funcs]

    def _timed_reward(self, func):
        name = getattr(func, "__name__", type(func).__name__)

        @functools.wraps(func)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.timings[f"reward:{name}"] = self.timings.get(f"reward:{name}", 0.0) + time.perf_counter() - start

        timed.__name__ = name
        return timed

    def _generate(self, prompts):
        start = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self.timings["generation"] += time.perf_counter() - start

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self.timings["scoring_total"] += time.perf_counter() - start


def run_policy(mode: str, config_file: Path, mask_tokenizer: Path, device: str, out: Path) -> dict:
    """Parts 2 and 3 (in a child process): build the policy, 3 GRPO steps, then `samtok-rl eval` on the sample."""
    from samtok_rl import grpo
    from samtok_rl.trainer import SamtokGRPOTrainer

    size = POLICY[mode]
    folder = build_policy(config_file, out / "policy", size["vocab"], device)
    tokenizer_args = (["--mask_tokenizer", str(mask_tokenizer.parent)] if mode == "full" else
                      ["--mask_tokenizer", "micro"])  # fmt: skip
    argv = [
        "--model_name_or_path", str(folder), "--dataset", "sample:gres", *tokenizer_args, "--reward_preset", "gres",
        "--reward_funcs", "mask_iou_reward", "--output_dir", str(out / "run"), "--max_steps", "3",
        "--num_generations", str(size["generations"]),
        "--per_device_train_batch_size", str(size["prompts"] * size["generations"]),
        "--max_completion_length", str(size["completion"]), "--learning_rate", "1e-6", "--beta", "0.0",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--rollout_prompts", "0", "--temperature", "1.0", "--seed", "0",
    ]  # fmt: skip
    if mode == "full":
        argv += ["--bf16", "true", "--dtype", "bfloat16", "--gradient_checkpointing", "true", "--use_vllm", "true",
                 "--vllm_mode", "colocate",
                 "--vllm_gpu_memory_utilization", "0.3", "--vllm_max_model_length", "4096",
                 "--max_pixels", "1605632", "--min_pixels", "3136"]  # fmt: skip
    else:
        argv += [
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--gradient_checkpointing",
            "false",
            "--dtype",
            "float32",
            "--max_pixels",
            "12544",
        ]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    grpo.SamtokGRPOTrainer = type("TimedGRPOTrainer", (TimedTrainer, SamtokGRPOTrainer), {})
    start = time.perf_counter()
    trainer = grpo.main(argv)
    total = time.perf_counter() - start
    steps = [e for e in trainer.state.log_history if "step_time" in e]
    timings = trainer.timings
    rewards = {k.removeprefix("reward:"): v for k, v in timings.items() if k.startswith("reward:")}
    textual = sum(v for k, v in rewards.items() if k != "mask_iou_reward")
    step_total = sum(e["step_time"] for e in steps)
    completions = sum(e["completions/mean_length"] for e in steps) * size["prompts"] * size["generations"]
    figures = {
        "config": config_file.name,
        "parameters_B": sum(p.numel() for p in trainer.model.parameters()) / 1e9,
        "embedding_rows": trainer.model.get_input_embeddings().weight.shape[0],
        "steps": len(steps),
        "completions_per_step": size["prompts"] * size["generations"],
        "step_time_s": [e["step_time"] for e in steps],
        "generation_s_per_step": timings["generation"] / len(steps),
        "textual_rewards_s_per_step": textual / len(steps),
        "iou_reward_s_per_step": rewards.get("mask_iou_reward", 0.0) / len(steps),
        "logprobs_and_optimisation_s_per_step": (
            step_total - timings["generation"] - textual - rewards.get("mask_iou_reward", 0.0)
        )
        / len(steps),  # fmt: skip
        "rollout_tokens_per_s": completions / timings["generation"],
        "training_peak_memory_GB": _peak_gb(device),
        "vllm": mode == "full",
        "run_s": total,
    }
    del trainer
    return figures


def run_eval(mode: str, policy: Path, mask_tokenizer: Path, out: Path, budget: float) -> dict:
    """Part 3 (in a child process): `samtok-rl eval` as a user runs it."""
    tokenizer_args = (["--mask_tokenizer", str(mask_tokenizer.parent)] if mode == "full" else
                      ["--mask_tokenizer", "micro"])  # fmt: skip
    cmd = [sys.executable, "-m", "samtok_rl.evaluate", "--task", "gres", "--sample", "--split", "val,train",
           "--model", str(policy), *tokenizer_args, "--output_dir", str(out / "eval"), "--no_progress",
           "--max_new_tokens", str(POLICY[mode]["completion"]),
           "--backend", "vllm" if mode == "full" else "hf"]  # fmt: skip
    if mode == "full":
        cmd += ["--gpu_memory_utilization", "0.5", "--max_model_len", "4096"]
    else:
        cmd += ["--device", "cpu", "--max_pixels", "12544"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as err:
        raise Overran("eval") from err
    if proc.returncode:
        raise RuntimeError(f"samtok-rl eval failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    run = metrics["run"]
    return {"backend": metrics["settings"]["backend"], "samples": run["samples"],
            "generation_s": run["generation_seconds"], "samples_per_s": run["samples"] / run["generation_seconds"],
            "total_s": time.perf_counter() - start}  # fmt: skip


def child(args) -> None:
    """`--child <part>`: one part in its own process; the figures go to `--child_out` as JSON."""
    out = Path(args.child_out)
    if args.child == "mask_tokenizer":
        figures, saved = check_mask_tokenizer(args.mode, args.device, out.parent)
        result = {"figures": figures, "saved": str(saved)}
    else:
        result = run_policy(args.mode, Path(args.config_file), Path(args.mask_tokenizer), args.device, out.parent)
    out.write_text(json.dumps(result))


class Overran(Exception):
    """A part ran past its budget (`BUDGETS`); it was stopped."""


def _spawn(part: str, mode: str, device: str, work: Path, budget: float, **paths) -> dict:
    target = work / f"{part}.json"
    cmd = [sys.executable, __file__, "--child", part, "--mode", mode, "--device", device, "--child_out", str(target)]
    for key, value in paths.items():
        cmd += [f"--{key}", str(value)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as err:  # the child is killed by subprocess.run
        raise Overran(part) from err
    if proc.returncode:
        raise RuntimeError(f"gpu_check part {part!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(target.read_text())


def versions() -> dict:
    import transformers
    import trl

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}  # fmt: skip
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError:
        info["vllm"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def table(result: dict) -> str:
    lines = ["| part | figure | value |", "|---|---|---|"]
    for part in ("mask_tokenizer", "policy_qwen2_5_vl_3b", "eval", "policy_qwen3_vl_4b"):
        for key, value in (result.get(part) or {}).items():
            if isinstance(value, float):
                value = f"{value:.4g}" if math.isfinite(value) else str(value)
            elif isinstance(value, list):
                value = ", ".join(f"{v:.3g}" for v in value)
            lines.append(f"| {part} | {key} | {value} |")
    for part, seconds in result.get("part_s", {}).items():
        lines.append(f"| {part} | seconds / budget | {seconds:.0f} / {result['budgets_s'][part]:.0f} |")
    if "overran" in result:
        lines.append(
            f"| {result['overran']['part']} | OVERRAN its budget | stopped at {result['overran']['budget_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (the test in `make test`)")
    parser.add_argument("--qwen3", action="store_true", help="also the policy at Qwen3-VL-4B size")
    parser.add_argument("--out", default=None, help="the JSON (default benchmarks/results/gpu_check[_smoke].json)")
    # Child-process arguments (internal).
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                        help=f"override a part's budget (parts: {', '.join(BUDGETS['full'])})")  # fmt: skip
    parser.add_argument("--child", choices=["mask_tokenizer", "policy"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--child_out", help=argparse.SUPPRESS)
    for name in ("config_file", "mask_tokenizer"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    mode = "smoke" if args.smoke else "full"
    if mode == "full" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; `--smoke` runs the same code path on CPU")
    budgets = dict(BUDGETS[mode])
    for item in args.budget:
        part, _, seconds = item.partition("=")
        if part not in budgets:
            raise SystemExit(f"gpu_check: --budget {item!r}: no part {part!r} (parts: {', '.join(budgets)})")
        budgets[part] = float(seconds)
    device = "cuda:0" if mode == "full" else "cpu"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out) if args.out else RESULTS / f"gpu_check{'_smoke' if args.smoke else ''}.json"
    start = time.perf_counter()
    result = {"mode": mode, "device": torch.cuda.get_device_name(0) if mode == "full" else platform.processor() or
              "cpu", "versions": versions(), "budgets_s": budgets, "part_s": {}}  # fmt: skip
    suffix = "" if mode == "full" else "_smoke"
    policies = [("policy_qwen2_5_vl_3b", CONFIGS / f"qwen2_5_vl_3b{suffix}.json")]
    if args.qwen3:
        policies.append(("policy_qwen3_vl_4b", CONFIGS / f"qwen3_vl_4b{suffix}.json"))

    def timed_part(name, fn, *args, **kwargs):
        begin = time.perf_counter()
        try:
            result[name] = fn(*args, **kwargs)
        finally:
            result["part_s"][name] = time.perf_counter() - begin

    with tempfile.TemporaryDirectory(prefix="samtok-gpu-check-") as tmp:
        work = Path(tmp)
        try:
            (work / "tok").mkdir()
            timed_part(
                "mask_tokenizer", _spawn, "mask_tokenizer", mode, device, work / "tok", budgets["mask_tokenizer"]
            )
            saved = Path(result["mask_tokenizer"].pop("saved"))
            result["mask_tokenizer"] = result["mask_tokenizer"]["figures"]
            for key, config_file in policies:
                part = work / key
                part.mkdir()
                timed_part(key, _spawn, "policy", mode, device, part, budgets[key], config_file=config_file,
                           mask_tokenizer=saved)  # fmt: skip
                if key == "policy_qwen2_5_vl_3b":  # its own process: `samtok-rl eval`
                    timed_part("eval", run_eval, mode, part / "policy", saved, part, budgets["eval"])
        except Overran as err:
            result["overran"] = {"part": str(err), "budget_s": budgets[str(err)]}
    result["total_s"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\n{result['device']}; {result['versions']}; {result['total_s']:.0f} s; written to {out}")
    if "overran" in result:
        over = result["overran"]
        print(f"gpu_check: part {over['part']} ran past its budget of {over['budget_s']:.0f} s and was stopped; "
              "the parts before it are above")  # fmt: skip
        raise SystemExit(3)


if __name__ == "__main__":
    main()
