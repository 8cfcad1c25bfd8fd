"""Benchmark metrics: GRES (gRefCOCO, ReLA accounting) and GCG (GranD-f, the GLaMM evaluator).

Pure functions over numpy masks; no model is needed except the BERT text encoder used by GCG Recall.
"""

from .gcg import caption_metrics, gcg_metrics, greedy_miou, greedy_recall_matches, java_available, simple_tokenize
from .gres import gres_metrics, union_masks
from .table import GCG_COLUMNS, GRES_COLUMNS, format_table
from .text_similarity import BertTextSimilarity


__all__ = [
    "GCG_COLUMNS",
    "GRES_COLUMNS",
    "BertTextSimilarity",
    "caption_metrics",
    "format_table",
    "gcg_metrics",
    "greedy_miou",
    "greedy_recall_matches",
    "gres_metrics",
    "java_available",
    "simple_tokenize",
    "union_masks",
]
