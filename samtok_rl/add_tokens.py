"""`samtok-rl add-mask-tokens`: give a base VLM the 514 SAMTok mask tokens, once, in one process, before training.

    samtok-rl add-mask-tokens --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --output_dir models/qwen2_5_vl_3b_mt

A distributed run cannot do this step itself: under DeepSpeed ZeRO-3 or FSDP the embedding is partitioned across
processes, so resizing it and saving it from one process would hang at a barrier or write empty tensors. And both
TRL's reference model (`beta > 0`) and colocated vLLM load the policy from its folder, so the resized embeddings
must be on disk before training starts. Train from the folder this writes (`model_name_or_path: <output_dir>`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from samtok_rl.cli import config_parser, report_errors
from samtok_rl.errors import UsageError
from samtok_rl.files import save_checkpoint
from samtok_rl.logs import setup_logging
from samtok_rl.tokens import MASK_TOKENS, add_mask_tokens


logger = logging.getLogger(__name__)


@dataclass
class AddMaskTokensArguments:
    """Arguments of `samtok-rl add-mask-tokens`."""

    model_name_or_path: str = field(metadata={"help": "The base VLM: a local folder or a Hub id."})
    output_dir: str = field(metadata={"help": "Where to save the model and processor with the mask tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of the new embedding rows' initialisation."})
    dtype: str = field(default="auto", metadata={"help": "dtype to load and save the weights in."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


def add_mask_tokens_to_model(args: AddMaskTokensArguments) -> Path:
    """Load `args.model_name_or_path`, add the mask tokens (non-special, seeded rows), save to `args.output_dir`.

    Returns:
        `Path`: the output folder. An existing model folder there is never overwritten.
    """
    out = Path(args.output_dir)
    if (out / "config.json").exists():
        raise UsageError(f"{out} already holds a model (config.json); choose another output_dir")
    processor = AutoProcessor.from_pretrained(
        args.model_name_or_path, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    model = AutoModelForImageTextToText.from_pretrained(
        args.model_name_or_path, revision=args.revision, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    present = sum(t in processor.tokenizer.get_vocab() for t in MASK_TOKENS)
    add_mask_tokens(processor, model, seed=args.seed)
    # Written beside `out` and renamed into place: a crash never leaves a half-saved model that looks finished.
    save_checkpoint(model, processor, out)
    logger.info("%d mask tokens added (%d were present); saved to %s", len(MASK_TOKENS) - present, present, out)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser(
        [AddMaskTokensArguments], prog="samtok-rl add-mask-tokens", description=__doc__.split("\n\n")[0]
    )
    (args,) = parser.parse_args_and_config(args=None if argv is None else list(argv))
    setup_logging()
    return add_mask_tokens_to_model(args)


if __name__ == "__main__":
    sys.exit(report_errors("add-mask-tokens", main))
