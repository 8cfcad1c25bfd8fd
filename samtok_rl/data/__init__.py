"""Dataset readers (gRefCOCO, GranD-f) and the bundled real-photo sample."""

from samtok_rl.data._common import DataError, decode_rle, merge_rles, rle_from_mask
from samtok_rl.data.grandf import read_grandf_gcg, read_grandf_gcg_gt
from samtok_rl.data.grefcoco import read_grefcoco
from samtok_rl.data.sample import SamplePaths, sample_paths


__all__ = [
    "DataError",
    "SamplePaths",
    "decode_rle",
    "merge_rles",
    "read_grandf_gcg",
    "read_grandf_gcg_gt",
    "read_grefcoco",
    "rle_from_mask",
    "sample_paths",
]
