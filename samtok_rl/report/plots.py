"""Curves of a training run over its steps (matplotlib, written as PNG files beside the report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


__all__ = ["PANELS", "plot_curves"]

# (title, the keys of a log entry it draws, keys picked by prefix/suffix). Rewards and monitors are found by name, so a
# plug-in reward or a task's monitors appear without listing them here.
PANELS = (
    ("reward components (mean per step)", lambda k: k.startswith("rewards/") and k.endswith("/mean")),
    ("total reward", lambda k: k in ("reward",)),
    ("monitors: mask counts", lambda k: k in ("gres/pred_masks", "gres/gt_masks", "gcg/pred_pairs", "gcg/gt_pairs")),
    (
        "monitors: rates",
        lambda k: (k.startswith("gres/") or k.startswith("gcg/")) and ("rate" in k or "no_target" in k),
    ),
    ("GRPO signal", lambda k: k in ("frac_reward_zero_std", "reward_std", "kl", "entropy", "clip_ratio/region_mean")),
    # Guided groups (`samtok_rl.guided`): how often the reference answer is put in, and how foreign it still is.
    ("guided groups", lambda k: k.startswith("guided/")),
    # The benchmark's metrics on the eval split (`samtok_rl.training_eval`), in percent.
    (
        "eval split: benchmark metrics",
        lambda k: k.startswith("eval/") and k not in ("eval/samples", "eval/seconds"),
    ),
)


def _label(key: str) -> str:
    return key.removeprefix("rewards/").removesuffix("/mean")


def plot_curves(entries: Sequence[dict], folder: Path) -> list[tuple[str, Path]]:
    """One PNG per panel of [`PANELS`] that has data in `entries` (log entries with a `step`).

    Returns:
        `list[tuple[str, Path]]`: `(title, file)` per panel drawn.
    """
    keys = sorted(
        {k for e in entries for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (title, wanted) in enumerate(PANELS):
        chosen = [k for k in keys if wanted(k)]
        if not chosen:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
        for key in chosen:
            points = [(e["step"], e[key]) for e in entries if key in e]
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=2.5, linewidth=1.2,
                    label=_label(key))  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = folder / f"curve{number}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append((title, path))
    return written
