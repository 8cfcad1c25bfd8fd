"""`samtok-rl filter`: score every prompt of a prepared dataset with the start model, and drop those it cannot learn from.

    samtok-rl filter --dataset out/gres --model zhouyik/Qwen2.5-VL-3B-SAMTok-co --reward_preset gres \
        --output_dir out/gres-filter
    samtok-rl filter --recipe recipes/gres/qwen2_5_vl_3b_samtok_grpo.yaml --output_dir out/gres-filter

For each prompt, `num_generations` completions are sampled from the model (the eval runner's backends: vLLM on CUDA,
transformers `generate` otherwise) at the training temperature and scored with the recipe's rewards. A prompt whose
weighted total reward has no spread over its completions (std at most `min_std`, the test dynamic sampling uses) gives
GRPO zero advantage: the filtered copy leaves it out, along with prompts outside the pass-rate bounds.

Writes into `output_dir`: `scores.jsonl` (per prompt: every completion's text and rewards, the mean, std and pass
rate; appended per batch, so an interrupted run resumes where it stopped and a finished one generates nothing),
`scored/` (the dataset with columns `reward_mean`, `reward_std`, `pass_rate`) and `filtered/` (the rows kept), both
prepared folders that `dataset:` in a recipe takes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

import rewards
from samtok_rl.cli import config_parser, report_errors
from samtok_rl.configs import SamtokScriptArguments
from samtok_rl.dynamic_sampling import group_reward_std
from samtok_rl.errors import UsageError
from samtok_rl.files import open_rgb, read_json_lines, write_json_atomic
from samtok_rl.logs import setup_logging
from samtok_rl.parsing import clean_output
from samtok_rl.prepare import write_prepared


__all__ = ["FilterConfig", "filter_dataset", "main", "prompt_stats"]

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SETTINGS_FILE = "filter_settings.json"
DEFAULT_BATCH_SIZE = {"hf": 4, "vllm": 256}
# The recipe keys `--recipe` reads (the rest of a training recipe is about training).
RECIPE_KEYS = {"dataset": "dataset", "model_name_or_path": "model", "reward_preset": "reward_preset",
               "reward_funcs": "reward_funcs", "reward_weights": "reward_weights", "mask_tokenizer": "mask_tokenizer",
               "repetition_limit": "repetition_limit", "num_generations": "num_generations",
               "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
               "max_completion_length": "max_new_tokens", "max_pixels": "max_pixels", "min_pixels": "min_pixels",
               "seed": "seed", "image_root": "image_root"}  # fmt: skip


@dataclass
class FilterConfig:
    """What `samtok-rl filter` scores and keeps (flags, `--config FILE.yaml`, or a training recipe's via `--recipe`)."""

    output_dir: str = field(metadata={"help": "scores.jsonl, scored/ and filtered/ (resumable)."})
    recipe: str | None = field(
        default=None,
        metadata={"help": "A training recipe: its dataset, model, rewards and sampling settings are the defaults."},
    )
    dataset: str | None = field(
        default=None, metadata={"help": "A `samtok-rl prepare` folder, sample:gres/gcg, or an authors' RL parquet."}
    )
    image_root: str | None = field(default=None, metadata={"help": "With a parquet dataset: its image folder."})
    model: str | None = field(default=None, metadata={"help": "The start model (folder, Hub id or tiny:<kind>)."})
    reward_preset: str | None = field(default=None, metadata={"help": "gres or gcg (see rewards.PRESETS)."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": "Rewards after the preset's."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward (default 1)."})
    mask_tokenizer: str | None = field(default=None, metadata={"help": "For the IoU reward and sample: datasets."})
    repetition_limit: int = field(default=3, metadata={"help": "As the training recipe's."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (GRPO's group)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (the training one)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off, as TRL's default)."})
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Completion budget (the recipe's max_completion_length)."}
    )
    min_pixels: int = field(default=3136, metadata={"help": "Qwen image resolution floor."})
    max_pixels: int = field(default=1_605_632, metadata={"help": "Qwen image resolution cap."})
    backend: str = field(default="auto", metadata={"help": "auto, vllm or hf", "choices": ["auto", "vllm", "hf"]})
    batch_size: int | None = field(default=None, metadata={"help": "Prompts per generation call (hf 4, vllm 256)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (per batch: seed + first row)."})
    device: str | None = field(default=None, metadata={"help": "Default: CUDA if any, else cpu."})
    min_std: float = field(default=1e-4, metadata={"help": "Keep prompts whose reward std is above this."})
    pass_reward: str | None = field(
        default=None,
        metadata={"help": "The reward that decides a pass (default: the task's mask reward, else the first)."},
    )
    pass_threshold: float = field(default=1.0, metadata={"help": "A completion passes when pass_reward >= this."})
    min_pass_rate: float = field(default=0.0, metadata={"help": "Keep prompts passed at least this often."})
    max_pass_rate: float = field(default=1.0, metadata={"help": "Keep prompts passed at most this often."})
    max_model_len: int = field(default=8192, metadata={"help": "vLLM context length."})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM share of the GPU memory."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor-parallel size."})
    max_samples: int | None = field(default=None, metadata={"help": "Only the first N rows (debugging)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress: don't)."})

    def __post_init__(self):
        if self.recipe is not None:
            path = Path(self.recipe)
            if not path.is_file():
                raise UsageError(f"recipe {self.recipe!r} does not exist")
            recipe = yaml.safe_load(path.read_text()) or {}
            defaults = {f.name: f.default for f in fields(FilterConfig)}
            for key, name in RECIPE_KEYS.items():
                # A flag given on the command line (a value other than the default) wins over the recipe.
                if key in recipe and getattr(self, name) == defaults[name]:
                    setattr(self, name, recipe[key])
        if self.dataset is None or self.model is None:
            raise UsageError("give `dataset` and `model` (or a training `recipe` that names them)")
        if self.num_generations < 2:
            raise UsageError(f"num_generations must be >= 2 to measure a reward spread, got {self.num_generations}")
        if not 0 <= self.min_pass_rate <= self.max_pass_rate <= 1:
            raise UsageError(
                f"need 0 <= min_pass_rate ({self.min_pass_rate}) <= max_pass_rate ({self.max_pass_rate}) <= 1"
            )


def prompt_stats(scores: torch.Tensor, weights: torch.Tensor, pass_column: int, threshold: float) -> dict:
    """One prompt's statistics from its `(num_generations, num_rewards)` scores (NaN: a reward that did not apply).

    `std` is the spread of the weighted total as GRPO (and dynamic sampling) sees it.

    Example:
    >>> s = torch.tensor([[1.0, 1.0], [1.0, 0.4], [0.0, 0.0]])
    >>> {k: round(v, 3) for k, v in prompt_stats(s, torch.ones(2), pass_column=1, threshold=1.0).items()}
    {'mean': 1.133, 'std': 1.026, 'pass_rate': 0.333}
    """
    totals = (scores * weights.unsqueeze(0)).nansum(dim=1)
    std = group_reward_std(scores, weights, len(scores))[0].item()
    passed = (torch.nan_to_num(scores[:, pass_column], nan=-1.0) >= threshold).float().mean().item()
    return {"mean": totals.mean().item(), "std": std, "pass_rate": passed}


def _read_scores(path: Path) -> dict[int, dict]:
    """Finished prompts by row; a torn last line (an interrupted write) is scored again."""
    records, bad = read_json_lines(path, key="row")
    if bad:
        logger.warning("%s: line(s) %s are not records and are ignored (their prompts are scored again)", path,
                       ", ".join(str(k) for k, _ in bad))  # fmt: skip
    return {record["row"]: record for record in records}


def filter_dataset(config: FilterConfig, generator=None) -> dict:
    """Score, write and filter (`samtok-rl filter` from Python). Returns counts and the output folders.

    `generator` (optional): an object with `sample(questions, images, n, temperature, top_p, top_k, seed)`,
    `strip_tokens()` and `close()`; built from `config.backend` when some prompt still needs scoring.
    """
    from samtok_rl.evaluate import _make_generator, check_model_writes_masks
    from samtok_rl.generation import resolve_backend
    from samtok_rl.loading import load_rows, prepared_folder
    from samtok_rl.mask_tokenizer import default_device
    from samtok_rl.prepare import prepared_tokenizer

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = list(rewards.PRESETS[config.reward_preset]) if config.reward_preset else []
    if config.reward_preset and config.reward_preset not in rewards.PRESETS:
        raise UsageError(f"unknown reward_preset {config.reward_preset!r}; known: {', '.join(rewards.PRESETS)}")
    specs += [s for s in config.reward_funcs or [] if s not in specs]
    if not specs:
        raise UsageError("no rewards: set `reward_preset` or `reward_funcs`")
    weights = torch.tensor(config.reward_weights or [1.0] * len(specs), dtype=torch.float32)
    if len(weights) != len(specs):
        raise UsageError(f"{len(weights)} reward_weights for {len(specs)} rewards {specs}")
    funcs = rewards.get_reward_funcs(
        specs, mask_tokenizer=config.mask_tokenizer, repetition_limit=config.repetition_limit
    )
    names = [f.__name__ if hasattr(f, "__name__") else type(f).__name__ for f in funcs]
    pass_name = config.pass_reward or next((n for n in names if n.endswith("_mask_reward")), names[0])
    if pass_name not in names:
        raise UsageError(f"pass_reward {pass_name!r} is not one of the rewards {names}")
    rows = load_rows(SamtokScriptArguments(dataset=config.dataset, mask_tokenizer=config.mask_tokenizer,
                                           max_train_samples=config.max_samples, image_root=config.image_root))  # fmt: skip
    task = rows[0]["task"]

    # What changes the scores; a resumed run must match it.
    settings = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "progress", "batch_size", "device",
                                                                    "backend", "recipe", "min_std", "min_pass_rate",
                                                                    "max_pass_rate", "max_samples", "max_model_len",
                                                                    "gpu_memory_utilization", "tensor_parallel_size")}  # fmt: skip
    settings.update(rewards=specs, weights=weights.tolist(), pass_reward=pass_name)
    settings_path = out / SETTINGS_FILE
    if settings_path.is_file() and (out / SCORES_FILE).is_file():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise UsageError(
                f"{out} holds scores made with other settings ({', '.join(changed)}); use another output_dir"
            )
    write_json_atomic(settings_path, settings)

    done = _read_scores(out / SCORES_FILE)
    todo = [i for i in range(len(rows)) if i not in done]
    owned = generator is None and bool(todo)
    device = config.device or default_device()
    backend = resolve_backend(config.backend, device)
    if owned:
        check_model_writes_masks(config.model)
        generator = _make_generator(config, backend, device, config.max_new_tokens)
    generated = 0
    if todo:
        strip = generator.strip_tokens()
        batch_size = config.batch_size or DEFAULT_BATCH_SIZE[backend]
        path = out / SCORES_FILE
        # A torn last line (an interrupted write) is closed first, so it cannot swallow the next record.
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        bar = tqdm(total=len(todo), desc="filter", unit="prompt", disable=not config.progress)
        for k in range(0, len(todo), batch_size):
            batch = [rows[i] for i in todo[k : k + batch_size]]
            images = [open_rgb(r["image"]) for r in batch]
            questions = [r["prompt"][0]["content"][-1]["text"] for r in batch]
            samples = generator.sample(questions, images, config.num_generations, config.temperature, config.top_p,
                                       config.top_k, config.seed + todo[k])  # fmt: skip
            records = []
            for i, row, image, texts in zip(todo[k : k + batch_size], batch, images, samples):
                texts = [clean_output(t, strip) for t in texts]
                n = len(texts)
                columns = {"solution": [row["solution"]] * n, "task": [row["task"]] * n,
                           "gt_masks": [row["gt_masks"]] * n, "image": [image] * n}  # fmt: skip
                scores = torch.tensor(
                    [[float("nan") if v is None else float(v) for v in f([row["prompt"]] * n, texts, **columns)]
                     for f in funcs], dtype=torch.float32,
                ).T  # (n, rewards)  # fmt: skip
                stats = prompt_stats(scores, weights, names.index(pass_name), config.pass_threshold)
                records.append({"row": i, "image": row["image"], "texts": texts,
                                "rewards": {nm: scores[:, j].tolist() for j, nm in enumerate(names)}, **stats})  # fmt: skip
            with open(path, "a", encoding="utf-8") as f:  # one write per batch
                f.write(("\n" if torn else "") + "".join(json.dumps(r) + "\n" for r in records))
            torn = False
            done.update((r["row"], r) for r in records)
            generated += len(batch)
            bar.update(len(batch))
        bar.close()
    if owned:
        generator.close()

    stats = [done[i] for i in range(len(rows))]
    scored = rows.add_column("reward_mean", [s["mean"] for s in stats])
    scored = scored.add_column("reward_std", [s["std"] for s in stats])
    scored = scored.add_column("pass_rate", [s["pass_rate"] for s in stats])
    keep = [i for i, s in enumerate(stats)
            if s["std"] > config.min_std and config.min_pass_rate <= s["pass_rate"] <= config.max_pass_rate]  # fmt: skip
    prepared_settings = {"tokenizer": prepared_tokenizer(prepared_folder(config.dataset, config.image_root))
                         if not config.dataset.startswith("sample:") else config.mask_tokenizer,
                         "filter": settings}  # fmt: skip
    write_prepared(scored, out / "scored", task, prepared_settings)
    if keep:
        write_prepared(scored.select(keep), out / "filtered", task,
                       dict(prepared_settings, min_std=config.min_std, min_pass_rate=config.min_pass_rate,
                            max_pass_rate=config.max_pass_rate))  # fmt: skip
    else:
        logger.warning("no prompt passed the filter: %s/filtered is not written", out)
    zero = sum(s["std"] <= config.min_std for s in stats)
    return {"rows": len(rows), "generated": generated, "kept": len(keep), "zero_spread": zero,
            "mean_pass_rate": sum(s["pass_rate"] for s in stats) / len(stats), "scored": out / "scored",
            "filtered": out / "filtered" if keep else None}  # fmt: skip


def make_parser():
    """The `samtok-rl filter` parser (`--config FILE.yaml` and the fields of [`FilterConfig`])."""
    return config_parser([FilterConfig], prog="samtok-rl filter", description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> dict:
    """Run `samtok-rl filter` (also `python -m samtok_rl.filter`) and print what was kept."""
    (config,) = make_parser().parse_args_and_config(args=None if argv is None else list(argv))
    setup_logging()
    result = filter_dataset(config)
    print(
        f"samtok-rl filter: {result['rows']} prompts ({result['generated']} scored now), {result['zero_spread']} "
        f"without reward spread, mean pass rate {result['mean_pass_rate']:.3f}; kept {result['kept']} -> "
        f"{result['filtered']} (all, with reward_mean / reward_std / pass_rate: {result['scored']})"
    )
    return result


if __name__ == "__main__":
    sys.exit(report_errors("filter", main))
