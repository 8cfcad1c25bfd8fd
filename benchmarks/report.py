"""What seeing the masks costs: rollouts on disk during training, and building and opening a large report.

    python benchmarks/report.py [--runs 2] [--completions 1000]

1. The demo (`samtok_rl.demo`, 20 GRPO steps, warm start cached) with `--rollout_prompts 0` (no rollouts written)
   and 4 (the default), alternating, `--runs` each: mean GRPO step time over steps 2-20, read from `metrics.jsonl`
   (TRL's `step_time`: generation, rewards, rollout records and the optimizer step).
2. A training folder of `--completions` completions (the demo's rollouts repeated over more steps), reported with
   `samtok-rl inspect --max_samples 0`: build time, page and picture sizes, and the wall time of headless Chromium
   loading the page and rendering its first screen, beside the same for the demo's own report (when `chromium` is on
   PATH).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import demo  # noqa: E402
from samtok_rl.inspector import InspectConfig, inspect_folder  # noqa: E402


def step_time(folder: Path) -> float:
    entries = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    times = [e["step_time"] for e in entries if "step_time" in e and e["step"] >= 2]
    return statistics.mean(times)


def open_seconds(index: Path) -> float:
    """Wall time of headless Chromium loading `index` and writing a screenshot of its first screen."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp}/p",
                        "--window-size=1300,1400", f"--screenshot={tmp}/s.png", index.resolve().as_uri()],
                       capture_output=True, check=True, timeout=300)  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--completions", type=int, default=1000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="samtok-report-bench-"))
    try:
        times = {0: [], 4: []}
        for run in range(args.runs):
            for prompts in (0, 4) if run % 2 == 0 else (4, 0):
                out = root / f"demo-{prompts}-{run}"
                demo.main(["--output_dir", str(out), "--rollout_prompts", str(prompts), "--save_strategy", "no",
                           "--disable_tqdm", "true"])  # fmt: skip
                times[prompts].append(step_time(out))
        print("\n| rollout_prompts | " + " | ".join(f"run {k + 1}" for k in range(args.runs)) + " | mean |")
        print("|---|" + "---:|" * (args.runs + 1))
        for prompts, values in times.items():
            cells = " | ".join(f"{v:.3f} s" for v in values)
            print(f"| {prompts} | {cells} | {statistics.mean(values):.3f} s |")

        # A large run: the demo's rollouts repeated over more steps (each group keeps its own image and codes).
        source = root / "demo-4-0"
        records = [json.loads(line) for line in (source / "rollouts.jsonl").read_text().splitlines()]
        big = root / "big"
        big.mkdir()
        for name in ("metrics.jsonl", "samtok_run.json"):
            shutil.copy(source / name, big / name)
        lines, step, k = [], 0, 0
        per_step = max(r["prompt_index"] for r in records) + 1
        group_size = sum(r["step"] == records[0]["step"] and r["prompt_index"] == 0 for r in records)
        while len(lines) < args.completions:
            step += 1
            for _ in range(per_step * group_size):
                lines.append(json.dumps(dict(records[k % len(records)], step=step)))
                k += 1
        (big / "rollouts.jsonl").write_text("\n".join(lines[: args.completions]) + "\n")
        start = time.perf_counter()
        summary = inspect_folder(InspectConfig(folder=str(big), max_samples=0))
        build = time.perf_counter() - start
        pictures = sum(p.stat().st_size for p in (big / "report" / "img").iterdir())
        print(f"\nreport of {args.completions} completions ({summary['groups']} groups, {summary['pictures']} pictures): "
              f"built in {build:.1f} s; index.html {summary['index'].stat().st_size / 1e6:.2f} MB, pictures "
              f"{pictures / 1e6:.1f} MB")  # fmt: skip
        if shutil.which("chromium") or shutil.which("chromium-browser"):
            small = open_seconds(source / "report" / "index.html")
            large = open_seconds(summary["index"])
            print(f"headless Chromium, load + first screen: demo report {small:.2f} s, {args.completions}-completion "
                  f"report {large:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
