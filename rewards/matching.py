"""The graded match of predicted mask codes against the reference codes, the textual reward rules' one scoring core.

A mask is its pair of code strings `(level-0, level-1)`. A predicted pair earns `EXACT_CREDIT` against an equal
reference pair, `COARSE_CREDIT` against one that shares only the level-0 (coarse) code, else nothing: SAMTok's RL
rewards (CycleGRPO's `text2mask.py`) grade a mask whose coarse code is right but whose refinement is wrong as partly
right. GRES, GCG and the grounded GCG variant all grade through `grade`, `graded_set_score` or
`hungarian_set_score`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment


__all__ = ["COARSE_CREDIT", "EXACT_CREDIT", "CodeTarget", "grade", "graded_set_score", "hungarian_set_score"]

EXACT_CREDIT = 1.0
COARSE_CREDIT = 0.4

Codes = tuple[str, str]


def grade(pred: Codes, targets: Collection[Codes]) -> float:
    """The best credit of one predicted pair against any of `targets`.

    Example:
    >>> grade(("0123", "0301"), [("0123", "0302"), ("0007", "0300")])
    0.4
    """
    if pred in targets:
        return EXACT_CREDIT
    return COARSE_CREDIT if any(pred[0] == t[0] for t in targets) else 0.0


class CodeTarget(NamedTuple):
    """The reference pairs of one answer, indexed for grading (built once per distinct reference answer)."""

    codes: tuple[Codes, ...]
    exact: frozenset[Codes]
    coarse: frozenset[str]

    @classmethod
    def of(cls, codes: Sequence[Codes]) -> CodeTarget:
        codes = tuple(codes)
        return cls(codes, frozenset(codes), frozenset(c0 for c0, _ in codes))


def graded_set_score(pred: Sequence[Codes], target: CodeTarget | Sequence[Codes]) -> float:
    """The reference set accuracy: unique predictions graded against their best reference pair, max-normalised.

    Two predictions may take credit from the same reference pair (no one-to-one assignment); duplicates earn credit
    once but count in the denominator. Both sides empty gives 1.0, one side empty 0.0.

    Args:
        pred (`Sequence[tuple[str, str]]`): predicted code pairs, duplicates kept.
        target (`CodeTarget` or `Sequence[tuple[str, str]]`): the reference pairs.

    Returns:
        `float` in `[0, 1]`.

    Example:
    >>> a, a1 = ("0123", "0301"), ("0123", "0302")  # same coarse code
    >>> graded_set_score([a, a1], [a])  # (1 + 0.4) / 2
    0.7
    >>> graded_set_score([], [])
    1.0
    """
    if not isinstance(target, CodeTarget):
        target = CodeTarget.of(target)
    if not pred:
        return 0.0 if target.codes else 1.0
    if not target.codes:
        return 0.0
    exact, coarse = target.exact, target.coarse
    n_exact = n_coarse = 0
    for p in set(pred):
        if p in exact:
            n_exact += 1
        elif p[0] in coarse:
            n_coarse += 1
    # Integer counts keep the sum independent of set iteration order.
    return (n_exact * EXACT_CREDIT + n_coarse * COARSE_CREDIT) / max(len(pred), len(target.codes))


def hungarian_set_score(pred: Sequence[Codes], target: CodeTarget | Sequence[Codes]) -> float:
    """Set accuracy under a one-to-one assignment maximising the graded score (each reference pair pays once).

    Same grades and denominator as `graded_set_score`, but a reference pair credits at most one prediction, so
    hedging with near-duplicates ({A, A'} against {A, B}) earns nothing extra.

    Example:
    >>> a, a1, b = ("0123", "0301"), ("0123", "0302"), ("0007", "0400")
    >>> graded_set_score([a, a1], [a, b]), hungarian_set_score([a, a1], [a, b])
    (0.7, 0.5)
    """
    gt = target.codes if isinstance(target, CodeTarget) else tuple(target)
    if not pred:
        return 0.0 if gt else 1.0
    if not gt:
        return 0.0
    credit = np.array([[grade(p, (t,)) for t in gt] for p in pred])
    rows, cols = linear_sum_assignment(credit, maximize=True)
    return float(credit[rows, cols].sum()) / max(len(pred), len(gt))
