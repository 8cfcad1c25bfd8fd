"""The SAMTok paper's numbers for the released 3B checkpoints, so `samtok-rl eval` can print them beside its own.

Source: SAMTok ("Representing Any Mask with Two Words", Zhou et al.), Table 1 (GCG on GranD-f: METEOR / CIDEr / AP50 /
mIoU / Recall) and Table 3 (GRES on gRefCOCO: gIoU / cIoU / N-acc), rows Qwen2.5-VL-SAMTok 3B "-co", "(ft)" and
"(rl)", as published on the project page (zhouyiks.github.io, projects/SAMTok/figures/table1.png and table3.png).
The released model names map to the rows as the SAMTok README's model zoo says.
"""

from __future__ import annotations

import math
from pathlib import Path


__all__ = ["PAPER", "paper_numbers", "with_paper"]

_GRES_CO = {"val": (70.5, 68.2, 60.5), "testA": (73.8, 73.0, 58.8), "testB": (65.9, 65.4, 55.3)}
_GRES_FT = {"val": (77.1, 71.2, 78.0), "testA": (77.4, 75.6, 73.6), "testB": (68.3, 66.5, 67.2)}
_GRES_RL = {"val": (79.4, 73.7, 81.5), "testA": (79.4, 77.7, 77.7), "testB": (71.3, 69.8, 72.0)}
_GCG_CO = {"val": (16.9, 51.8, 36.8, 71.7, 46.9), "test": (16.7, 52.5, 36.1, 70.9, 47.0)}
_GCG_FT = {"val": (17.3, 54.7, 37.0, 71.7, 47.7), "test": (17.0, 53.9, 36.3, 71.4, 48.0)}
_GCG_RL = {"val": (16.9, 52.5, 41.5, 73.5, 53.5), "test": (16.5, 51.0, 40.4, 73.2, 53.5)}

_GRES_KEYS = ("gIoU", "cIoU", "N_acc")
_GCG_KEYS = ("METEOR", "CIDEr", "AP50", "mIoU", "Recall")


def _rows(table: dict, keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {split: dict(zip(keys, values, strict=True)) for split, values in table.items()}


# released model name -> task -> split -> metric -> value (percent)
PAPER: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "Qwen2.5-VL-3B-SAMTok-co": {"gres": _rows(_GRES_CO, _GRES_KEYS), "gcg": _rows(_GCG_CO, _GCG_KEYS)},
    "Qwen2.5-VL-3B-SAMTok-gres-ft": {"gres": _rows(_GRES_FT, _GRES_KEYS)},
    "Qwen2.5-VL-3B-SAMTok-gcg-ft": {"gcg": _rows(_GCG_FT, _GCG_KEYS)},
    "Qwen2.5-VL-3B-SAMTok-gres-rl": {"gres": _rows(_GRES_RL, _GRES_KEYS)},
    "Qwen2.5-VL-3B-SAMTok-gcg-rl": {"gcg": _rows(_GCG_RL, _GCG_KEYS)},
}


def paper_numbers(model: str, task: str) -> dict[str, dict[str, float]] | None:
    """The paper's numbers for `model` (a Hub id or a folder named after the release) on `task`, or None.

    Example:
    >>> paper_numbers("zhouyik/Qwen2.5-VL-3B-SAMTok-gres-rl", "gres")["val"]
    {'gIoU': 79.4, 'cIoU': 73.7, 'N_acc': 81.5}
    >>> paper_numbers("/models/Qwen2.5-VL-3B-SAMTok-gres-rl/", "gcg") is None
    True
    """
    return PAPER.get(Path(str(model).rstrip("/")).name, {}).get(task)


def with_paper(splits: dict[str, dict], model: str, task: str, columns: tuple[str, ...]):
    """Rows and columns for `metrics.format_table`: per metric, this run's value, the paper's and the difference
    (the paper columns stay empty, `-`, for a model or a split the paper does not report).

    Example:
    >>> rows, cols = with_paper({"val": {"gIoU": 80.0}}, "zhouyik/Qwen2.5-VL-3B-SAMTok-gres-rl", "gres", ("gIoU",))
    >>> cols, rows["val"]["gIoU paper"], round(rows["val"]["gIoU diff"], 2)
    (['gIoU', 'gIoU paper', 'gIoU diff'], 79.4, 0.6)
    """
    paper = paper_numbers(model, task) or {}
    label = {c: c.replace("_", "-") for c in columns}  # N_acc -> N-acc, the paper's spelling
    out_columns = [name for c in columns for name in (c, f"{label[c]} paper", f"{label[c]} diff")]
    rows = {}
    for split, measured in splits.items():
        published = paper.get(split, {})
        row = {}
        for c in columns:
            ours, theirs = measured.get(c), published.get(c)
            row[c], row[f"{label[c]} paper"] = ours, theirs
            row[f"{label[c]} diff"] = None if _missing(ours) or theirs is None else ours - theirs
        rows[split] = row
    return rows, out_columns


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
