"""The miniature over several seeds: SFT start vs after GRPO vs GRPO with dynamic sampling, mean and spread.

    python benchmarks/miniature.py [--seeds 0 1 2] [--output_dir outputs/miniature_seeds]

Each seed is one `make miniature ARGS="--seed K --dynamic_sampling"` (new data, warm start and GRPO runs from that
seed) in `<output_dir>/seed<K>`; a seed whose `results.json` is already there is read back, not run again. Prints the
table of `benchmarks/README.md` and writes it, with every seed's numbers, to `benchmarks/results/miniature.json`, and
the GRPO runs' mask reward per kind of training prompt to `benchmarks/results/miniature.png`.
The spread is the sample standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import miniature  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results" / "miniature.json"
PLOT = RESULTS.with_suffix(".png")
WINDOW = 10  # GRPO steps per plotted point: one step holds only 4 prompts, so a kind may be absent from it


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def summary(per_seed: dict[int, dict]) -> str:
    runs = list(per_seed.values())
    arms = [a for a in miniature.ARMS if all(a in r for r in runs)]
    head = ["val metric", "SFT start"]
    for arm in arms:
        head += [miniature.ARMS[arm], "diff"]
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
    seconds = [r["seconds"] for r in runs]
    lines.append("")
    lines.append(f"seeds {sorted(per_seed)}; {runs[0]['val_rows']} val expressions each; one seed's whole run "
                 f"{min(seconds):.0f}-{max(seconds):.0f} s")  # fmt: skip
    lines += ["", "Per seed (against the decoded GT codes):", ""]
    head = ["seed", "gIoU: SFT start -> " + " / ".join(miniature.ARMS[a] for a in arms),
            "exact codes: SFT start -> " + " / ".join(miniature.ARMS[a] for a in arms)]  # fmt: skip
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

    from samtok_rl.prepare import load_prepared
    from samtok_rl.prompts import message_text

    fig, axes = plt.subplots(1, len(miniature.ROW_KINDS), figsize=(14, 3.4), dpi=100, sharey=True)
    drawn = False
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for colour, (seed, folder) in zip(colours, folders.items()):
        if not (folder / "prepared" / "rl").is_dir():
            continue
        rl = load_prepared(folder / "prepared" / "rl")
        kind_of = {
            message_text(prompt): miniature.row_kind(expression, codes, held_out[seed])
            for prompt, expression, codes in zip(rl["prompt"], rl["expression"], rl["gt_codes"])
        }
        for arm, style in (("grpo", "-"), ("grpo_ds", "--")):
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
                        marker="o", markersize=2.5, linewidth=1.2, label=f"seed {seed}, {miniature.ARMS[arm]}")  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/miniature_seeds")
    args = parser.parse_args()
    per_seed, folders = {}, {}
    for seed in args.seeds:
        folder = folders[seed] = Path(args.output_dir) / f"seed{seed}"
        done = folder / "results.json"
        if done.is_file():
            per_seed[seed] = json.loads(done.read_text())
        else:
            per_seed[seed] = miniature.run(
                miniature.MiniatureConfig(output_dir=str(folder), seed=seed, dynamic_sampling=True)
            )
    text = summary(per_seed)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"table": text, "seeds": per_seed}, indent=1) + "\n")
    # results.json written before it recorded held_out come from runs with the default
    held_out = {seed: r.get("held_out", list(miniature.HELD_OUT)) for seed, r in per_seed.items()}
    if training_curves(folders, held_out, PLOT):
        print(f"training curves: {PLOT}")


if __name__ == "__main__":
    main()
