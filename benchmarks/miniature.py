"""The miniature over several seeds: SFT start vs after GRPO vs the other arms, mean and spread.

    python benchmarks/miniature.py [--seeds 0 1 2] [--output_dir outputs/miniature_seeds]
    python benchmarks/miniature.py --guided --seeds 0 1 2 7 3 4 [--output_dir outputs/miniature_guided]

Each seed is one `make miniature ARGS="--seed K --dynamic_sampling"` (new data, warm start and GRPO runs from that
seed) in `<output_dir>/seed<K>`; a seed whose `results.json` is already there is read back, not run again. Prints the
table of `benchmarks/README.md` and writes it, with every seed's numbers, to `benchmarks/results/miniature.json`, and
the GRPO runs' mask reward per kind of training prompt to `benchmarks/results/miniature.png`.
With `--guided` the arms are plain GRPO, guided groups (plain loss and LUFFY-shaped) at `guided_threshold` 1.0 and
guided groups at 0.5 (`make miniature ARGS="--seed K --guided true --guided_thresholds 1.0 0.5 --eval_steps 100
--eval_on_start false"`: one evaluation, at the end), and the outputs are `miniature_guided.json` / `.png`, the table
with each arm's difference to plain GRPO on the same seed.
The spread is the sample standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import miniature  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results" / "miniature.json"
PLOT = RESULTS.with_suffix(".png")
GUIDED_RESULTS = RESULTS.with_name("miniature_guided.json")
WINDOW = 10  # GRPO steps per plotted point: one step holds only 4 prompts, so a kind may be absent from it
ARM_STYLES = {"grpo": "-", "grpo_ds": "--", "guided": ":", "guided_shaped": "-."}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def arms_of(runs: list[dict]) -> list[str]:
    """The GRPO arms every seed ran, in the order the runs list them."""
    names = runs[0].get("arms") or [a for a in miniature.ARMS if a in runs[0]]
    return [a for a in names if all(a in r for r in runs)]


def summary(per_seed: dict[int, dict]) -> str:
    runs = list(per_seed.values())
    arms = arms_of(runs)
    head = ["val metric", "SFT start"]
    for arm in arms:
        head += [miniature.arm_label(arm), "diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in miniature.TABLE_METRICS:
        cells = [key.replace("_", "-"), mean_sd([r["sft"][key] for r in runs])]
        for arm in arms:
            cells.append(mean_sd([r[arm][key] for r in runs]))
            cells.append(mean_sd([r[arm][key] - r["sft"][key] for r in runs]))
        lines.append("| " + " | ".join(cells) + " |")
    for kind in miniature.ROW_KINDS:  # exact codes per kind of expression, summed over the seeds
        right, rows = (sum(r["sft"]["exact by kind"][kind][i] for r in runs) for i in (0, 1))
        cells = [f"exact: {kind} (all seeds)", f"{right}/{rows}"]
        for arm in arms:
            after = sum(r[arm]["exact by kind"][kind][0] for r in runs)
            cells += [f"{after}/{rows}", f"{after - right:+d}"]
        lines.append("| " + " | ".join(cells) + " |")
    others = [a for a in arms if a != "grpo"]
    if "grpo" in arms and others:  # each arm against plain GRPO on the same seed (same data and warm start)
        lines += ["", "Against plain GRPO on the same seed (mean ± sd of the per-seed differences):", ""]
        lines += ["| metric | " + " | ".join(f"{miniature.arm_label(a)} - plain" for a in others) + " |",
                  "|---|" + "---:|" * len(others)]  # fmt: skip
        for key in ("gIoU (decoded GT)", "exact codes"):
            cells = [mean_sd([r[a][key] - r["grpo"][key] for r in runs]) for a in others]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        for kind in miniature.ROW_KINDS:
            cells = [f"{sum(r[a]['exact by kind'][kind][0] - r['grpo']['exact by kind'][kind][0] for r in runs):+d}"
                     for a in others]  # fmt: skip
            lines.append(f"| exact: {kind} (all seeds, count) | " + " | ".join(cells) + " |")
    seconds = [r["seconds"] for r in runs]
    lines.append("")
    lines.append(f"seeds {sorted(per_seed)}; {runs[0]['val_rows']} val expressions each; one seed's whole run "
                 f"{min(seconds):.0f}-{max(seconds):.0f} s")  # fmt: skip
    lines += ["", "Per seed (against the decoded GT codes):", ""]
    head = ["seed", "gIoU: SFT start -> " + " / ".join(miniature.arm_label(a) for a in arms),
            "exact codes: SFT start -> " + " / ".join(miniature.arm_label(a) for a in arms)]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|---:|---|---|"]
    for seed, r in per_seed.items():
        cells = [str(seed)]
        for key in ("gIoU (decoded GT)", "exact codes"):
            cells.append(f"{r['sft'][key]:.1f} -> " + " / ".join(f"{r[a][key]:.1f}" for a in arms))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curves(folders: dict[int, Path], held_out: dict[int, list[str]], path: Path) -> Path | None:
    """Plot the GRPO mask reward per kind of training prompt (held-out single, seen single, group, no target) over the
    steps, one line per seed and arm, from each run's `rollouts.jsonl`; None when no seed folder holds its runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(miniature.ROW_KINDS), figsize=(14, 3.4), dpi=100, sharey=True)
    drawn = False
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
    if len(folders) > len(colours):
        raise ValueError(f"{len(folders)} seeds: the plot has colours for {len(colours)}")
    for colour, (seed, folder) in zip(colours, folders.items()):
        if not (folder / "prepared" / "rl").is_dir():
            continue
        kind_of = kinds_of_prompts(folder, held_out[seed])
        for arm, style in ARM_STYLES.items():
            rollouts = folder / arm / "rollouts.jsonl"
            if not rollouts.is_file():
                continue
            sums: dict[tuple[str, int], list[float]] = {}
            for line in rollouts.read_text().splitlines():
                record = json.loads(line)
                key = (kind_of[record["prompt"]], (record["step"] - 1) // WINDOW)
                sums.setdefault(key, []).append(record["rewards"]["gres_mask_reward"])
            for ax, kind in zip(axes, miniature.ROW_KINDS):
                points = sorted((w, statistics.mean(v)) for (k, w), v in sums.items() if k == kind)
                ax.plot([(w + 0.5) * WINDOW for w, _ in points], [v for _, v in points], style, color=colour,
                        marker="o", markersize=2.5, linewidth=1.2, label=f"seed {seed}, {miniature.arm_label(arm)}")  # fmt: skip
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, kind in zip(axes, miniature.ROW_KINDS):
        ax.set_title(f"training prompts: {kind}", fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"mask reward (mean over {WINDOW} steps)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def kinds_of_prompts(folder: Path, held_out: list[str]) -> dict[str, str]:
    """The kind of expression (`miniature.ROW_KINDS`) of each GRPO training prompt of a seed's folder, by prompt text."""
    from samtok_rl.prepare import load_prepared
    from samtok_rl.prompts import message_text

    rl = load_prepared(folder / "prepared" / "rl")
    return {message_text(p): miniature.row_kind(e, c, held_out)
            for p, e, c in zip(rl["prompt"], rl["expression"], rl["gt_codes"])}  # fmt: skip


def guided_share(folders: dict[int, Path], held_out: dict[int, list[str]], arms: list[str]) -> str:
    """Which training prompts got the reference answer: guided groups / groups per kind of expression, all seeds,
    from each guided arm's `rollouts.jsonl` (every prompt of every step is recorded)."""
    guided_arms = [a for a in arms if a.startswith("guided")]
    lines = ["| kind of training prompt | " + " | ".join(miniature.arm_label(a) for a in guided_arms) + " |",
             "|---|" + "---:|" * len(guided_arms)]  # fmt: skip
    counts = {a: {kind: [0, 0] for kind in miniature.ROW_KINDS} for a in guided_arms}
    for seed, folder in folders.items():
        kind_of = kinds_of_prompts(folder, held_out[seed])
        for arm in guided_arms:
            groups: dict[tuple[int, int], list[dict]] = {}
            for line in (folder / arm / "rollouts.jsonl").read_text().splitlines():
                record = json.loads(line)
                groups.setdefault((record["step"], record["prompt_index"]), []).append(record)
            for records in groups.values():
                count = counts[arm][kind_of[records[0]["prompt"]]]
                count[0] += any(r["guided"] for r in records)
                count[1] += 1
    for kind in miniature.ROW_KINDS:
        cells = [f"{g}/{n} ({g / n:.0%})" if n else "-" for g, n in (counts[a][kind] for a in guided_arms)]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def guided_curves(folders: dict[int, Path], held_out: dict[int, list[str]], arms: list[str], path: Path) -> Path:
    """Per arm, averaged over the seeds: the mask reward of the sampled completions (the reference answers left out)
    per kind of training prompt, and the share of groups guided, over the GRPO steps (windows of `WINDOW` steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(miniature.ROW_KINDS) + 1, figsize=(17, 3.4), dpi=100)
    colours = dict(zip(arms, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for arm in arms:
        rewards: dict[tuple[str, int], list[float]] = {}
        guided: dict[int, list[float]] = {}
        for seed, folder in folders.items():
            kind_of = kinds_of_prompts(folder, held_out[seed])
            for line in (folder / arm / "rollouts.jsonl").read_text().splitlines():
                record = json.loads(line)
                if not record.get("guided"):
                    key = (kind_of[record["prompt"]], (record["step"] - 1) // WINDOW)
                    rewards.setdefault(key, []).append(record["rewards"]["gres_mask_reward"])
            for line in (folder / arm / "metrics.jsonl").read_text().splitlines():
                entry = json.loads(line)
                if "guided/fraction" in entry:
                    guided.setdefault((entry["step"] - 1) // WINDOW, []).append(entry["guided/fraction"])
        style = {"color": colours[arm], "marker": "o", "markersize": 2.5, "linewidth": 1.4,
                 "label": miniature.arm_label(arm)}  # fmt: skip
        for ax, kind in zip(axes, miniature.ROW_KINDS):
            points = sorted((w, statistics.mean(v)) for (k, w), v in rewards.items() if k == kind)
            ax.plot([(w + 0.5) * WINDOW for w, _ in points], [v for _, v in points], **style)
        if guided:
            points = sorted((w, statistics.mean(v)) for w, v in guided.items())
            axes[-1].plot([(w + 0.5) * WINDOW for w, _ in points], [v for _, v in points], **style)
    for ax, kind in zip(axes, miniature.ROW_KINDS):
        ax.set_title(f"training prompts: {kind}", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel(f"sampled mask reward (mean, {len(folders)} seeds)")
    axes[-1].set_title("share of groups guided", fontsize=10)
    axes[-1].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default=None, help="default outputs/miniature_seeds (--guided: _guided)")
    parser.add_argument("--guided", action="store_true", help="The guided-groups arms instead of dynamic sampling.")
    args = parser.parse_args()
    if args.output_dir is None:
        args.output_dir = "outputs/miniature_guided" if args.guided else "outputs/miniature_seeds"
    results, plot = (GUIDED_RESULTS, GUIDED_RESULTS.with_suffix(".png")) if args.guided else (RESULTS, PLOT)
    per_seed, folders = {}, {}
    for seed in args.seeds:
        folder = folders[seed] = Path(args.output_dir) / f"seed{seed}"
        done = folder / "results.json"
        if done.is_file():
            per_seed[seed] = json.loads(done.read_text())
        else:
            arms = {"guided": True, "guided_thresholds": [1.0, 0.5], "eval_steps": miniature.MiniatureConfig.grpo_steps,
                    "eval_on_start": False} if args.guided else {"dynamic_sampling": True}  # fmt: skip
            per_seed[seed] = miniature.run(miniature.MiniatureConfig(output_dir=str(folder), seed=seed, **arms))
    # results.json written before it recorded held_out come from runs with the default
    held_out = {seed: r.get("held_out", list(miniature.HELD_OUT)) for seed, r in per_seed.items()}
    text = summary(per_seed)
    if args.guided:
        text += "\n\nGroups given the reference answer, by kind of training prompt (all seeds):\n\n"
        text += guided_share(folders, held_out, arms_of(list(per_seed.values())))
    print(text)
    results.parent.mkdir(exist_ok=True)
    for r in per_seed.values():  # the committed file names no machine's folders
        if r.get("report"):
            r["report"] = os.path.relpath(r["report"])
    results.write_text(json.dumps({"table": text, "seeds": per_seed}, indent=1) + "\n")
    if args.guided:
        print(f"training curves: {guided_curves(folders, held_out, arms_of(list(per_seed.values())), plot)}")
    elif training_curves(folders, held_out, plot):
        print(f"training curves: {plot}")


if __name__ == "__main__":
    main()
