"""Rank-aware logging for the command-line entry points, as the Hugging Face scripts do it.

The main process logs at INFO; the other processes of a distributed run at WARNING, so an 8-GPU run prints each line
once. Only samtok-rl's own loggers (`samtok_rl.*`, `rewards.*`) are set; transformers, datasets and TRL keep theirs.
"""

from __future__ import annotations

import logging
import os


FORMAT = "%(levelname)s %(name)s: %(message)s"


def is_main_process() -> bool:
    """Rank 0 of the launch (`RANK`, set by torchrun / accelerate), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int | None = None) -> int:
    """Send samtok-rl's log records to stderr: INFO on the main process, WARNING on the others (or `level`).

    Returns:
        `int`: the level set.
    """
    if level is None:
        level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(format=FORMAT)  # a no-op when the application configured logging already
    for name in ("samtok_rl", "rewards"):
        logging.getLogger(name).setLevel(level)
    return level
