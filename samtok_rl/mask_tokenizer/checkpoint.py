"""Checkpoint and config files: state-dict loading, the strict-load error, and building `SAM2Base` from a sam2 YAML.

sam2, hydra and omegaconf are imported inside the builders, never at import time (`import sam2` initialises Hydra).
"""

from __future__ import annotations

import importlib.resources
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from samtok_rl.errors import UsageError


if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


# The released SAMTok model folders ship the tokenizer under this name, next to the VLM weights.
CHECKPOINT_NAME = "mask_tokenizer_256x2.pth"
# Packaged with sam2; the original hard-codes exactly these SAM 2.1 hiera-L values.
DEFAULT_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
# Packaged with samtok_rl (samtok_rl/configs/); the micro architecture of the golden reference data.
MICRO_SAM2_CONFIG = "sam2_micro.yaml"


class CheckpointMismatchError(UsageError):
    """A checkpoint file is unreadable, or its state dict does not match the model's keys or shapes."""


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Flat tensor dict from a `.pth` (weights_only) or `.safetensors` file."""
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError) as err:
        # An empty, truncated or non-checkpoint file (weights_only also refuses pickled code).
        raise CheckpointMismatchError(
            f"{path}: not a readable checkpoint ({(str(err).splitlines() or [type(err).__name__])[0]:.120})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
    return state


def _format_keys(keys: Sequence[str], limit: int = 50) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... and {len(keys) - limit} more" if len(keys) > limit else shown


# sam2, hydra and omegaconf are imported inside the builders on purpose: `import sam2` initialises Hydra globally,
# so importing samtok_rl.mask_tokenizer must not do it (only building a model does).


def _read_config(sam2_config: str | Path):
    """Load a sam2 YAML given as a file path, a name in `samtok_rl/configs`, or a name packaged with sam2."""
    from omegaconf import OmegaConf

    path = Path(sam2_config)
    if path.is_file():
        return OmegaConf.load(path)
    name = str(sam2_config)
    # Finding a resource of the sam2 package imports sam2 (which initialises Hydra): this runs at build time only.
    roots = [importlib.resources.files("samtok_rl") / "configs", importlib.resources.files("sam2")]
    candidates = [root.joinpath(*name.split("/")) for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return OmegaConf.create(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(
        f"sam2 config {name!r} not found; looked at: {', '.join(str(c) for c in [path, *candidates])}"
    )


def _build_sam2_base(sam2_config: str | Path) -> SAM2Base:
    """Instantiate `SAM2Base` from a sam2 hydra YAML (path, `samtok_rl/configs` name or sam2 packaged name)."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = _read_config(sam2_config)
        OmegaConf.resolve(cfg)
        # Instantiate the model node directly rather than through sam2.build_sam2: build_sam2 would switch on
        # dynamic_multimask_via_stability (apply_postprocessing), which the original tokenizer does not use.
        return instantiate(cfg.model, _recursive_=True)
    except (yaml.YAMLError, OmegaConfBaseException, HydraException, FileNotFoundError) as err:
        raise UsageError(
            f"sam2 config {str(sam2_config)!r} does not build a SAM 2 model: {(str(err).splitlines() or [type(err).__name__])[0]:.160}"
        ) from err
