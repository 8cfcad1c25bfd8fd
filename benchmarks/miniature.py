"""The miniature over several seeds: SFT start vs after GRPO vs GRPO with dynamic sampling, mean and spread.

    python benchmarks/miniature.py [--seeds 0 1 2] [--output_dir outputs/miniature_seeds]

Each seed is one `make miniature ARGS="--seed K --dynamic_sampling"` (new data, warm start and GRPO runs from that
seed) in `<output_dir>/seed<K>`; a seed whose `results.json` is already there is read back, not run again. Prints the
table of `benchmarks/README.md` and writes it, with every seed's numbers, to `benchmarks/results/miniature.json`.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/miniature_seeds")
    args = parser.parse_args()
    per_seed = {}
    for seed in args.seeds:
        folder = Path(args.output_dir) / f"seed{seed}"
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


if __name__ == "__main__":
    main()
