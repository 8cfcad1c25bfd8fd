"""Paper-style text tables of metric dicts, for the eval runner's output."""

import math
from collections.abc import Mapping, Sequence


# The columns of the SAMTok paper's tables: Table 3 (GRES, per split) and Table 1 (GCG, per split).
GRES_COLUMNS = ("gIoU", "cIoU", "N_acc")
GCG_COLUMNS = ("METEOR", "CIDEr", "AP50", "mIoU", "Recall")

_HEADERS = {"N_acc": "N-acc", "T_acc": "T-acc"}


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_table(
    rows: Mapping[str, Mapping[str, float | int | None]],
    columns: Sequence[str],
    *,
    row_header: str = "split",
    digits: int = 2,
    average: bool = False,
) -> str:
    """Format metric dicts as an aligned plain-text table, one row per split (or model).

    Values are printed with `digits` decimals (SAMTok rounds ×100 metrics to 2); a missing, None or nan value
    prints as `-`. Metric names are shown in the paper's spelling (`N_acc` -> `N-acc`).

    Args:
        rows (`Mapping[str, Mapping[str, float | int | None]]`):
            Row name -> metric dict (e.g. the output of `gres_metrics` for each split), in display order.
        columns (`Sequence[str]`):
            Metric keys to show, e.g. `GRES_COLUMNS` or `GCG_COLUMNS`.
        row_header (`str`, *optional*, defaults to `"split"`):
            Header of the first column.
        digits (`int`, *optional*, defaults to `2`):
            Decimals printed.
        average (`bool`, *optional*, defaults to `False`):
            Append an `avg` row, the plain mean over rows of each column (the paper's "avg" for GRES); `-` where
            any row lacks the value.

    Returns:
        `str`: the table, lines joined by newlines, no trailing newline.

    Example:

    >>> print(format_table({"val": {"gIoU": 79.4, "cIoU": 73.7, "N_acc": 81.5}}, GRES_COLUMNS))
    split   gIoU   cIoU  N-acc
    val    79.40  73.70  81.50

    """
    body = {name: [metrics.get(col) for col in columns] for name, metrics in rows.items()}
    if average and body:
        body["avg"] = [
            None if any(_is_missing(v[j]) for v in body.values()) else sum(v[j] for v in body.values()) / len(body)
            for j in range(len(columns))
        ]
    header = [row_header] + [_HEADERS.get(c, c) for c in columns]
    lines = [[name] + ["-" if _is_missing(v) else f"{v:.{digits}f}" for v in values] for name, values in body.items()]
    widths = [max(len(line[j]) for line in [header] + lines) for j in range(len(header))]

    def fmt(cells: list[str]) -> str:
        # Row names left-aligned, numbers right-aligned, two spaces between columns.
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join(fmt(line) for line in [header] + lines)
