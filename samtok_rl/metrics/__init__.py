"""Benchmark metrics: GRES (gRefCOCO, ReLA accounting) and GCG (GranD-f, the GLaMM evaluator).

Pure functions over numpy masks; no model is needed except the BERT text encoder used by GCG Recall.
"""

from .gcg import (
    caption_metrics,
    gcg_metrics,
    greedy_miou,
    greedy_pairs,
    greedy_recall_matches,
    iou_matrix,
    java_available,
    simple_tokenize,
)
from .gres import GresSample, gres_metrics, gres_sample, union_masks
from .table import GCG_COLUMNS, GRES_COLUMNS, format_table
from .text_similarity import BertTextSimilarity


__all__ = [
    "GCG_COLUMNS",
    "GRES_COLUMNS",
    "GresSample",
    "BertTextSimilarity",
    "caption_metrics",
    "format_table",
    "gcg_metrics",
    "greedy_miou",
    "greedy_pairs",
    "greedy_recall_matches",
    "gres_metrics",
    "gres_sample",
    "iou_matrix",
    "java_available",
    "simple_tokenize",
    "union_masks",
]
