"""Every textual reward on adversarial 64 KB completions (`tests/test_rewards_fuzz.py`'s patterns), per completion.

    python benchmarks/adversarial.py

Prints, per pattern, the slowest reward and its time (best of 3, parse caches cleared before each call).
"""

from __future__ import annotations

import sys
from pathlib import Path


# Run as a script, this file's folder is sys.path[0] and would not hold the tests; the repository root must come first
# so that `rewards` is the package, not a file.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_rewards_fuzz import PRESET_REWARDS, adversarial_completions, reward_seconds  # noqa: E402


def main() -> None:
    print("| 64 KB completion | slowest reward | ms per completion |\n|---|---|---:|")
    for pattern, text in adversarial_completions().items():
        times = {name: min(reward_seconds(name, text) for _ in range(3)) for name in PRESET_REWARDS}
        name = max(times, key=times.get)
        print(f"| {pattern} | {name} | {times[name] * 1e3:.2f} |")


if __name__ == "__main__":
    main()
