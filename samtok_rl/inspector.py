"""`samtok-rl inspect <folder>`: an HTML report of a training run or an evaluation folder, with the masks drawn.

    samtok-rl inspect outputs/demo                 # a training run: curves, then each sampled group's completions
    samtok-rl inspect out/eval-gres                # an eval folder: metrics, then the samples worst first

The report is `<folder>/report/index.html` with its pictures in `<folder>/report/img/`: open it from disk, it needs no
server and no network. A training run's codes are decoded with the run's own mask tokenizer (recorded in
`samtok_run.json`; `--mask_tokenizer` overrides it); an eval folder's predictions already hold their masks.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from samtok_rl.cli import config_parser, report_errors
from samtok_rl.errors import UsageError
from samtok_rl.logs import setup_logging


__all__ = ["InspectConfig", "inspect_folder", "main"]

logger = logging.getLogger(__name__)

REPORT_DIR = "report"


@dataclass
class InspectConfig:
    """What `samtok-rl inspect` reports on (the folder may also be given first, without `--folder`)."""

    folder: str = field(metadata={"help": "A training run's output_dir or a `samtok-rl eval` output_dir."})
    output: str | None = field(default=None, metadata={"help": "Report folder (default: <folder>/report)."})
    max_samples: int = field(
        default=200,
        metadata={
            "help": "Most prompt groups (training, spread over the run) or samples per split (eval, the worst) "
            "shown; 0 shows all."
        },
    )
    mask_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Training runs: the mask tokenizer decoding the codes (default: the run's, samtok_run.json)."
        },
    )
    sam2_config: str | None = field(
        default=None, metadata={"help": "sam2 YAML of the mask tokenizer (with checkpoint)."}
    )
    checkpoint: str | None = field(default=None, metadata={"help": "Mask tokenizer weights, .pth or .safetensors."})
    device: str | None = field(
        default=None, metadata={"help": "Mask decoding device (default: CUDA if any, else cpu)."}
    )


def _tokenizer_factory(config: InspectConfig, recorded: str | None):
    """A callable building the mask tokenizer (only when some rollout holds a code), checked before any work."""
    from samtok_rl.mask_tokenizer import (
        build_mask_tokenizer,
        check_mask_tokenizer_source,
        default_device,
        recorded_mask_tokenizer,
    )

    source, sam2_config, checkpoint = config.mask_tokenizer, config.sam2_config, config.checkpoint
    if source is None and checkpoint is None:
        if recorded is None:
            raise UsageError(
                f"{config.folder} does not record its mask tokenizer (samtok_run.json); name it with --mask_tokenizer"
            )
        source, sam2_config, checkpoint = recorded_mask_tokenizer(recorded)
    check_mask_tokenizer_source(source, sam2_config, checkpoint)
    device = config.device or default_device()
    return lambda: build_mask_tokenizer(source, sam2_config, checkpoint, device, drop_memory_modules=True)


def inspect_folder(config: InspectConfig) -> dict:
    """Build the report `config` describes; returns its summary (`index`: the page's path, counts)."""
    import json

    from samtok_rl.evaluate import METRICS_FILE, SETTINGS_FILE
    from samtok_rl.rollouts import ROLLOUTS_FILE, RUN_FILE
    from samtok_rl.runlog import METRICS_FILE as RUN_METRICS_FILE

    folder = Path(config.folder)
    if not folder.is_dir():
        raise UsageError(f"folder {str(folder)!r} does not exist")
    is_eval = (folder / SETTINGS_FILE).is_file() or (folder / METRICS_FILE).is_file()
    is_run = (folder / ROLLOUTS_FILE).is_file() or (folder / RUN_METRICS_FILE).is_file()
    if not is_eval and not is_run:
        raise UsageError(
            f"{folder} holds neither a training run ({ROLLOUTS_FILE}, {RUN_METRICS_FILE}) nor an evaluation "
            f"({SETTINGS_FILE}, {METRICS_FILE})"
        )
    out = Path(config.output) if config.output else folder / REPORT_DIR
    if out.exists():
        if not (out / "index.html").is_file():
            raise UsageError(f"{out} exists and is not a samtok-rl report; choose another --output")
        shutil.rmtree(out)  # a report is derived from the folder: rebuilding it replaces the old one
    if is_eval:
        from samtok_rl.report.evaluation import eval_report

        return eval_report(folder, out, config.max_samples)
    from samtok_rl.report.training import training_report

    run_file = folder / RUN_FILE
    recorded = json.loads(run_file.read_text()).get("mask_tokenizer") if run_file.is_file() else None
    return training_report(folder, out, _tokenizer_factory(config, recorded), config.max_samples)


def make_parser():
    """The `samtok-rl inspect` parser (`--config FILE.yaml` and the fields of [`InspectConfig`])."""
    return config_parser([InspectConfig], prog="samtok-rl inspect", description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> dict:
    """Run `samtok-rl inspect` (also `python -m samtok_rl.inspector`) and print the report's path."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--folder", *argv]  # `samtok-rl inspect <folder>`
    (config,) = make_parser().parse_args_and_config(args=argv)
    setup_logging()
    summary = inspect_folder(config)
    print(f"samtok-rl inspect: report written to {summary['index']} (open it in a browser)")
    return summary


if __name__ == "__main__":
    sys.exit(report_errors("inspect", main))
