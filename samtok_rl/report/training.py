"""The report of a training run: reward and monitor curves, then each sampled group's completions with their masks.

Reads what a run writes into its output folder: `metrics.jsonl` (every logged step, `samtok_rl.runlog`),
`rollouts.jsonl` (the completions of the first prompts of each logged step, `samtok_rl.rollouts`) and
`samtok_run.json` (the mask tokenizer the run's codes decode with). The policy's codes are decoded with that mask
tokenizer through `decode_batch`, one call for many groups, so the image encoder runs once per image.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from samtok_rl.errors import UsageError
from samtok_rl.files import read_json_lines
from samtok_rl.masks import decode_rle
from samtok_rl.parsing import NO_TARGET, split_think_answer
from samtok_rl.prompts import R1_SUFFIX
from samtok_rl.rollouts import ROLLOUTS_FILE, RUN_FILE
from samtok_rl.runlog import METRICS_FILE

from .overlay import colour_hex
from .page import esc, figure, kind_chips, legend, page, table
from .plots import plot_curves
from .render import Pictures, code_colours, load_image, marked_text


__all__ = ["decode_groups", "read_rollouts", "read_step_metrics", "select_steps", "training_report"]

logger = logging.getLogger(__name__)

DECODE_GROUPS = 16  # groups per decode_batch call: a few images' features and masks in memory at a time
BLOB_SHARE = 0.5  # a mask covering more than this share of the image is flagged ("one blob covering the image")


def _jsonl(path: Path, key: str | None = None) -> list[dict]:
    """The JSON records of a file (with `key`: those holding it); a torn last line (a run killed mid-write), or an
    object without `key` (written by something else), is left out with a warning naming the file and its line."""
    records, bad = read_json_lines(path, key=key)
    if bad:
        what = "JSON" if key is None else f"JSON records with {key!r}"
        logger.warning("%s: line(s) %s are not %s and are left out", path, ", ".join(str(k) for k, _ in bad), what)
    return records


def read_step_metrics(path: Path) -> list[dict]:
    """The GRPO step entries of `metrics.jsonl` (those with a `reward`), one per step (a resumed run's last), by step."""
    if not path.is_file():
        return []
    by_step = {e["step"]: e for e in _jsonl(path) if "reward" in e and "step" in e}
    return [by_step[s] for s in sorted(by_step)]


def read_eval_metrics(path: Path) -> list[dict]:
    """The benchmark evaluations of `metrics.jsonl` (`samtok_rl.training_eval`: entries with `eval/<metric>`), one per
    step (a resumed run's last), by step."""
    from samtok_rl.training_eval import LOGGED_NAMES

    names = {f"eval/{n}" for n in LOGGED_NAMES}
    if not path.is_file():
        return []
    by_step = {e["step"]: e for e in _jsonl(path) if "step" in e and names & e.keys()}
    return [by_step[s] for s in sorted(by_step)]


def read_rollouts(path: Path) -> dict[int, list[dict]]:
    """`rollouts.jsonl` by step. A step written again (a run resumed before it) keeps its latest records only."""
    steps: dict[int, list[dict]] = {}
    previous = None
    for record in _jsonl(path, key="prompt_index"):  # the report groups a step's records by it
        step = record.get("step")
        if step != previous and step in steps:
            steps[step] = []  # a later append of the same step replaces the earlier one
        steps.setdefault(step, []).append(record)
        previous = step
    return steps


def select_steps(steps: list[int], groups_per_step: dict[int, int], max_groups: int) -> list[int]:
    """Steps evenly spread over the run (first and last included) whose groups fit in `max_groups` (0: all).

    Example:
    >>> select_steps(list(range(1, 21)), {s: 2 for s in range(1, 21)}, 8)
    [1, 7, 14, 20]
    """
    if max_groups <= 0 or sum(groups_per_step.values()) <= max_groups:
        return steps
    per_step = max(1, max(groups_per_step.values()))
    count = max(1, min(len(steps), max_groups // per_step))
    if count == 1:
        return [steps[-1]]
    picks = sorted({round(k * (len(steps) - 1) / (count - 1)) for k in range(count)})
    return [steps[k] for k in picks]


def _kinds(record: dict, masks: np.ndarray) -> set[str]:
    codes = [tuple(c) for c in record["codes"]]
    answer = split_think_answer(record["completion"])[1]
    kinds = set()
    if record.get("guided"):
        kinds.add("guided")
    if len(codes) != len(set(codes)):
        kinds.add("duplicates")
    if not codes and answer is not None and NO_TARGET.lower() in answer.lower():
        kinds.add("no-target-answer")
    if record.get("gt_masks") == [] and codes:
        kinds.add("masks-on-no-target")
    if len(masks) and max(m.mean() for m in masks) > BLOB_SHARE:
        kinds.add("blob")
    return kinds


_KIND_LABELS = {
    "guided": "reference answers (guided groups)",
    "zero-std": "zero-std groups",
    "duplicates": "duplicate spans",
    "no-target-answer": '"No target." answers',
    "masks-on-no-target": "masks on no-target prompts",
    "blob": f"masks over {BLOB_SHARE:.0%} of the image",
}


def _group_card(step: int, records: list[dict], image: np.ndarray, real: bool, masks: list[np.ndarray],
                pictures: Pictures) -> tuple[str, set[str]]:  # fmt: skip
    """One prompt's group: GT, then the completions by reward (highest first) with their decoded masks."""
    first = records[0]
    gt = [decode_rle(r) for r in first.get("gt_masks") or []]
    parts = []
    gt_caption = "ground truth: " + (f"{len(gt)} mask(s)" if gt else "no target")
    if first.get("gt_masks") is None:
        gt_caption = "ground truth: not recorded"
    if not real:
        gt_caption += " (image not found: grey canvas)"
    parts.append(figure(pictures.save(image, gt), esc(gt_caption) + "<br>" + legend(
        [(colour_hex(k), f"GT {k + 1}") for k in range(len(gt))]), "ground truth"))  # fmt: skip
    group_kinds: set[str] = set()
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    if len(rewards) == len(records) and max(rewards) - min(rewards) < 1e-9:
        group_kinds.add("zero-std")
    order = sorted(range(len(records)), key=lambda k: -(records[k]["reward"] or float("-inf")))
    for rank, k in enumerate(order, start=1):
        record, decoded = records[k], masks[k]
        colours = code_colours(record["codes"])
        kinds = _kinds(record, decoded)
        group_kinds |= kinds
        src = pictures.save(image, list(decoded), [colours[tuple(c)] for c in record["codes"]])
        reward_rows = list(record["rewards"].items())
        reward_rows += [("total", record["reward"]), ("advantage", record["advantage"])]
        chips = kind_chips(kinds, _KIND_LABELS)
        score = "reward -" if record["reward"] is None else f"reward {record['reward']:.3f}"
        caption = (
            f"<b>#{rank}</b> {score}, {len(record['codes'])} mask(s) {chips}<br>"
            + legend([(colour_hex(c), f"{a}·{b}") for (a, b), c in colours.items()])
            + table(("reward", "value"), reward_rows)
            + f'<div class="text">{marked_text(record["completion"], colours)}</div>'
        )
        parts.append(figure(src, caption, f"completion {rank}"))
    question = first["prompt"].replace(R1_SUFFIX, "").strip()[:300]  # the think instruction is the same everywhere
    head = f"<h3>step {step} · prompt {first['prompt_index']} · {esc(first.get('task') or '')} · {esc(question)}</h3>"
    kinds_attr = " ".join(sorted(group_kinds))
    return (
        f'<div class="card" data-kinds="{kinds_attr}">{head}<div class="row">{"".join(parts)}</div></div>',
        group_kinds,
    )


def decode_groups(groups: list[list[dict]], tokenizer) -> list[tuple[np.ndarray, bool, list[np.ndarray]]]:
    """Each group's image (or grey canvas), whether it is the real image, and each completion's decoded masks.

    One `decode_batch` call for all the groups, one item per group holding every completion's codes, so the image
    encoder runs once per distinct image. `tokenizer` may be `None` when no completion holds a code.
    """
    loaded, items = [], []
    for records in groups:
        first = records[0]
        size = first["gt_masks"][0]["size"] if first.get("gt_masks") else (256, 256)
        image, real = load_image(first.get("image"), size)
        loaded.append((image, real))
        items.append((image, np.array([c for r in records for c in r["codes"]], dtype=np.int64).reshape(-1, 2)))
    decoded = [np.zeros((0, *image.shape[:2]), bool) for image, _ in loaded]
    with_codes = [k for k, (_, codes) in enumerate(items) if len(codes)]
    if with_codes:
        for k, masks in zip(with_codes, tokenizer.decode_batch([items[k] for k in with_codes])):
            decoded[k] = masks
    out = []
    for records, (image, real), masks in zip(groups, loaded, decoded):
        per_completion, offset = [], 0
        for record in records:
            per_completion.append(list(masks[offset : offset + len(record["codes"])]))
            offset += len(record["codes"])
        out.append((image, real, per_completion))
    return out


def _evaluations_table(run_dir: Path, evaluations: list[dict]) -> str:
    """The benchmark evaluations during training, one row per step, each naming its `samtok-rl eval` folder."""
    from samtok_rl.training_eval import eval_folder

    keys = [k for k in dict.fromkeys(k for e in evaluations for k in e) if k.startswith("eval/")]
    rows = []
    for e in evaluations:
        folder = eval_folder(run_dir, e["step"])
        where = str(folder.relative_to(run_dir)) if folder.is_dir() else "(folder missing)"
        rows.append([e["step"], *("-" if e.get(k) is None else f"{e[k]:.2f}" if isinstance(e[k], float) else e[k]
                                  for k in keys), where])  # fmt: skip
    return ("<h2>Evaluations on the eval split</h2><p class=\"note\">The benchmark's metrics of the policy at each "
            "evaluation; each folder is a `samtok-rl eval` folder: `samtok-rl inspect` draws its masks.</p>"
            + table(["step", *keys, "predictions"], rows))  # fmt: skip


def training_report(run_dir: Path, report_dir: Path, mask_tokenizer, max_groups: int = 200) -> dict:
    """Write `report_dir/index.html` for the training run in `run_dir`; returns a summary (counts, paths).

    Args:
        run_dir (`Path`): the run's `output_dir`.
        report_dir (`Path`): where the page and its pictures go.
        mask_tokenizer: a built `MaskTokenizer` (see `samtok_rl.mask_tokenizer.build_mask_tokenizer`), or a callable
            that builds it (called only when some rollout holds a code).
        max_groups (`int`): most prompt groups shown, over steps spread through the run; 0 shows all.
    """
    entries = read_step_metrics(run_dir / METRICS_FILE)
    rollouts = read_rollouts(run_dir / ROLLOUTS_FILE) if (run_dir / ROLLOUTS_FILE).is_file() else {}
    if not entries and not rollouts:
        raise UsageError(f"{run_dir} holds neither {METRICS_FILE} nor {ROLLOUTS_FILE}: not a samtok-rl training run")
    run_info = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    pictures = Pictures(report_dir)
    body = []

    evaluations = read_eval_metrics(run_dir / METRICS_FILE)
    plots = plot_curves(entries + evaluations, report_dir / "img")
    if plots:
        body.append('<h2>Curves</h2><div class="plots">' + "".join(
            f'<img src="img/{p.name}" alt="{esc(t)}" title="{esc(t)}">' for t, p in plots) + "</div>")  # fmt: skip
    else:
        body.append(f'<p class="note">No {METRICS_FILE} in {esc(run_dir)}: no curves.</p>')
    if evaluations:
        body.append(_evaluations_table(run_dir, evaluations))

    groups_per_step = {
        step: len({r["prompt_index"] for r in records}) for step, records in rollouts.items() if step is not None
    }
    steps = select_steps(sorted(groups_per_step), groups_per_step, max_groups)
    groups = []
    for step in steps:
        by_prompt = defaultdict(list)
        for record in rollouts[step]:
            by_prompt[record["prompt_index"]].append(record)
        groups += [(step, by_prompt[p]) for p in sorted(by_prompt)]
    shown = sum(groups_per_step[s] for s in steps)
    total = sum(groups_per_step.values())

    cards, counts = [], defaultdict(int)
    tokenizer = mask_tokenizer if not callable(mask_tokenizer) else None
    for start in range(0, len(groups), DECODE_GROUPS):
        chunk = groups[start : start + DECODE_GROUPS]
        if tokenizer is None and any(r["codes"] for _, records in chunk for r in records):
            tokenizer = mask_tokenizer()  # built on first need: a run whose completions hold no code needs none
        for (step, records), (image, real, masks) in zip(chunk, decode_groups([g for _, g in chunk], tokenizer)):
            card, kinds = _group_card(step, records, image, real, masks, pictures)
            cards.append(card)
            for kind in kinds:
                counts[kind] += 1

    note = f"{shown} of {total} prompt groups, from {len(steps)} of {len(groups_per_step)} logged steps"
    if shown < total:
        note += f" (spread over the run; `--max_samples 0` shows all {total})"
    body.append(f"<h2>Rollouts</h2><p class=\"note\">{esc(note)}. Each group: the image with its GT masks, then the "
                "completions from the highest reward to the lowest, with the masks their codes decode to (colour per "
                "distinct code pair, listed as level-0·level-1 codes).</p>")  # fmt: skip
    if not rollouts:
        body.append(f'<p class="note">No {ROLLOUTS_FILE} (the run had rollout_prompts: 0).</p>')
    body.extend(cards)
    rewards = run_info.get("rewards")
    subtitle = esc(
        f"{run_dir} · {len(entries)} logged steps · rewards {', '.join(rewards) if rewards else '?'} · mask tokenizer "
        f"{run_info.get('mask_tokenizer') or '?'}"
    )
    filters = [(kind, label, counts[kind]) for kind, label in _KIND_LABELS.items() if counts[kind]]
    report_dir.mkdir(parents=True, exist_ok=True)
    index = report_dir / "index.html"
    index.write_text(page(f"samtok-rl training run: {run_dir.name}", subtitle, "".join(body), filters))
    return {"index": index, "groups": shown, "groups_total": total, "plots": len(plots), "pictures": pictures.count}
