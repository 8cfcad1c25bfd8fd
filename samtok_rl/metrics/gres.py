"""GRES (gRefCOCO) metrics with ReLA's accounting, as SAMTok's GRES eval applies it.

Reference: henghuiding/ReLA `gres_model/evaluation/refer_evaluation.py` and the `metric()` function of SAMTok's
`qwen3vl_gres_eval.py` (bytedance/Sa2VA). The two agree (the tests check every branch by hand).
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np


# ReLA's precision thresholds, computed over target samples only.
PR_THRESHOLDS = (0.7, 0.8, 0.9)


def union_masks(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Union of a sample's decoded masks: the GRES prediction (or ground truth) of one sentence.

    An empty `masks` gives an all-False mask of `shape`, which is the "no target" answer.

    Args:
        masks (`Iterable[np.ndarray]`):
            Masks of shape `(H, W)`, bool or 0/1 integers.
        shape (`tuple[int, int]`):
            `(H, W)` of the original image. Every mask must have this shape.

    Returns:
        `np.ndarray`: `(H, W)` bool.

    Example:

    >>> int(union_masks([np.eye(2, dtype=bool), np.fliplr(np.eye(2, dtype=bool))], (2, 2)).sum())
    4
    >>> bool(union_masks([], (2, 3)).any())
    False

    """
    out = np.zeros(shape, dtype=bool)
    for k, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != out.shape:
            raise ValueError(f"union_masks: mask {k} has shape {mask.shape}, expected {out.shape}")
        out |= mask.astype(bool)
    return out


class GresSample(NamedTuple):
    """One sample's share of the GRES metrics (see [`gres_sample`])."""

    iou: float  # its term of gIoU's mean: 1 or 0 on a no-target sample, I/U on a target sample
    inter: int  # its ΣI term
    union: int  # its ΣU term
    outcome: str  # ReLA's counter: "TP", "FN", "FP" or "TN" ("positive" = "no target")


def gres_sample(pred: np.ndarray, gt: np.ndarray, where: str = "sample") -> GresSample:
    """One sample's IoU, cIoU terms and no-target outcome, as [`gres_metrics`] counts them (it sums these).

    Example:

    >>> gres_sample(np.zeros((2, 2), bool), np.zeros((2, 2), bool))  # no target, answered with no target
    GresSample(iou=1.0, inter=0, union=0, outcome='TP')
    >>> gres_sample(np.ones((2, 2), bool), np.array([[1, 0], [0, 0]], bool))
    GresSample(iou=0.25, inter=1, union=4, outcome='TN')

    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"gres_metrics: {where}: prediction shape {pred.shape} does not match ground-truth shape "
            f"{gt.shape} (both must be (H, W) at the original image size)"
        )
    union = int(np.logical_or(pred, gt).sum())
    pred_nt = not pred.any()
    if not gt.any():
        # No-target sample: a hit scores IoU 1 and adds nothing to cIoU; a miss adds its false-positive area to ΣU,
        # so hallucinated masks lower cIoU too.
        return GresSample(1.0, 0, 0, "TP") if pred_nt else GresSample(0.0, 0, union, "FN")
    if pred_nt:  # a rejected target: ReLA sets I = 0 (it already is: the prediction is empty)
        return GresSample(0.0, 0, union, "FP")
    inter = int(np.logical_and(pred, gt).sum())
    return GresSample(inter / union, inter, union, "TN")  # union >= |gt| > 0 here


def gres_metrics(pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> dict[str, float | int]:
    """gIoU, cIoU, N-acc and T-acc over one split, with ReLA's accounting.

    One sample per sentence. The prediction is the union of the sample's decoded masks (see [`union_masks`]); an
    all-False prediction is the "no target" answer, because LLM evaluators have no separate no-target classifier.
    An all-False ground truth is a no-target sample.

    | case | counter | ΣIoU | ΣI | ΣU |
    |---|---|---|---|---|
    | GT empty, pred empty | `TP` | 1 | 0 | 0 |
    | GT empty, pred non-empty | `FN` | 0 | 0 | \\|pred\\| (false-positive area) |
    | GT non-empty, pred empty | `FP` | 0 | 0 | \\|gt\\| |
    | GT non-empty, pred non-empty | `TN` | I/U | I | U |

    The counter names are ReLA's, where **"positive" means "no target"**: `TP` = no-target sample answered with no
    target, `FN` = no-target sample answered with a mask, `FP` = target sample answered with no target (rejected),
    `TN` = target sample answered with a mask. They look inverted; they are kept so numbers can be compared with ReLA.

    Undefined ratios are `nan` (a deliberate choice; ReLA reports 0 for N-acc/T-acc when a split has no no-target
    sample, which reads like a total failure):
    - `N_acc` is `nan` when the split has no no-target sample (TP + FN = 0);
    - `T_acc` and `Pr@*` are `nan` when the split has no target sample (TN + FP = 0);
    - `cIoU` is `nan` when ΣU = 0 (every sample is a correctly answered no-target one).

    Args:
        pred_masks (`Sequence[np.ndarray]`):
            One `(H, W)` bool (or 0/1) array per sample: the union of the predicted masks.
        gt_masks (`Sequence[np.ndarray]`):
            One `(H, W)` bool (or 0/1) array per sample, aligned with `pred_masks`: the union of the targets.

    Returns:
        `dict`: `gIoU`, `cIoU`, `N_acc`, `T_acc`, `Pr@0.7`, `Pr@0.8`, `Pr@0.9` in percent (unrounded floats;
        SAMTok rounds to 2 decimals when printing), the counters `TP`, `FN`, `FP`, `TN`, and `num_samples`,
        `num_no_target`, `sum_I`, `sum_U`.

    Example:

    >>> gt = [np.zeros((2, 2), bool), np.array([[1, 1], [0, 0]], bool)]
    >>> pred = [np.zeros((2, 2), bool), np.array([[1, 0], [0, 0]], bool)]
    >>> m = gres_metrics(pred, gt)
    >>> m["gIoU"], m["cIoU"], m["N_acc"], m["T_acc"]
    (75.0, 50.0, 100.0, 100.0)
    >>> m["TP"], m["TN"]  # ReLA's names: "positive" = "no target"
    (1, 1)

    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"gres_metrics: {len(pred_masks)} predictions but {len(gt_masks)} ground truths")
    if len(gt_masks) == 0:
        raise ValueError("gres_metrics: no samples")

    sum_iou = 0.0
    sum_i = 0
    sum_u = 0
    nt = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}
    target_ious = []
    for idx, (pred, gt) in enumerate(zip(pred_masks, gt_masks)):
        sample = gres_sample(pred, gt, where=f"sample {idx}")
        nt[sample.outcome] += 1
        sum_iou += sample.iou
        sum_i += sample.inter
        sum_u += sample.union
        if sample.outcome in ("FP", "TN"):
            target_ious.append(sample.iou)

    n = len(gt_masks)
    n_no_target = nt["TP"] + nt["FN"]
    n_target = nt["TN"] + nt["FP"]
    out: dict[str, float | int] = {
        "gIoU": 100.0 * sum_iou / n,
        "cIoU": 100.0 * sum_i / sum_u if sum_u > 0 else float("nan"),
        "N_acc": 100.0 * nt["TP"] / n_no_target if n_no_target > 0 else float("nan"),
        "T_acc": 100.0 * nt["TN"] / n_target if n_target > 0 else float("nan"),
    }
    for thr in PR_THRESHOLDS:
        hits = sum(iou >= thr for iou in target_ious)
        out[f"Pr@{thr:.1f}"] = 100.0 * hits / n_target if n_target > 0 else float("nan")
    out.update(nt)
    out.update(num_samples=n, num_no_target=n_no_target, sum_I=sum_i, sum_U=sum_u)
    return out
