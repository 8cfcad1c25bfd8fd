"""Dataset readers (gRefCOCO, GranD-f) and the bundled real-photo sample."""

from samtok_rl.data._common import DataError
from samtok_rl.data.grandf import read_grandf_gcg, read_grandf_gcg_gt
from samtok_rl.data.grefcoco import read_grefcoco
from samtok_rl.data.sample import SamplePaths, sample_paths


__all__ = [
    "DataError",
    "SamplePaths",
    "read_grandf_gcg",
    "read_grandf_gcg_gt",
    "read_grefcoco",
    "sample_paths",
]
