"""`build_mask_tokenizer`: the one way samtok-rl turns a named mask tokenizer into a loaded one.

Modelled on sam2's `build_sam.py`: one function takes whatever a recipe, a command line or a caller names, and one
rule picks the device. Training (the IoU reward, `sample:` datasets), `prepare`, `eval` and the inspector all call it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from samtok_rl.errors import UsageError
from samtok_rl.files import check_local_path, looks_local, sha256_file
from samtok_rl.mask_tokenizer.checkpoint import CHECKPOINT_NAME
from samtok_rl.mask_tokenizer.micro import build_micro_mask_tokenizer
from samtok_rl.mask_tokenizer.tokenizer import MaskTokenizer


__all__ = [
    "MICRO",
    "build_mask_tokenizer",
    "check_mask_tokenizer_files",
    "check_mask_tokenizer_source",
    "default_device",
    "recorded_mask_tokenizer",
    "same_mask_tokenizer",
]

# The name that selects the seeded micro tokenizer (seed 0) wherever a mask tokenizer is named: every command that
# says `micro` means the same weights.
MICRO = "micro"


def default_device() -> str:
    """The process's own CUDA device when there is one (under accelerate each process has set it), else the CPU."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def check_mask_tokenizer_source(source=None, sam2_config=None, checkpoint=None) -> None:
    """Raise unless exactly one of `source` and the (`sam2_config`, `checkpoint`) pair is given.

    Example:
    >>> check_mask_tokenizer_source("micro")
    >>> check_mask_tokenizer_source(checkpoint="w.pth")
    Traceback (most recent call last):
    ...
    samtok_rl.errors.UsageError: a mask tokenizer's sam2_config and checkpoint go together (got sam2_config=None, checkpoint='w.pth')
    """
    if (sam2_config is None) != (checkpoint is None):
        raise UsageError(
            "a mask tokenizer's sam2_config and checkpoint go together "
            f"(got sam2_config={sam2_config!r}, checkpoint={checkpoint!r})"
        )
    if (source is None) == (checkpoint is None):
        raise UsageError(
            "name the mask tokenizer once: either a source (`micro`, a SAMTok folder, a checkpoint file or a Hub id) "
            f"or sam2_config + checkpoint (got source={source!r}, checkpoint={checkpoint!r})"
        )


def _check_weights_file(path: Path, what: str) -> None:
    # An interrupted download or copy leaves an empty file, which otherwise loads only at the first decoded span.
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{what} checkpoint {str(path)!r} is empty ({size} bytes): copy or download it again")


def check_mask_tokenizer_files(source=None, sam2_config=None, checkpoint=None, what: str = "mask_tokenizer") -> None:
    """Refuse a mask tokenizer named by a local path whose weights are not there, before any work starts.

    `prepare`, `train`, `eval` and `inspect` call it (through `build_mask_tokenizer` or before their first step), so a
    missing folder or file, a folder without `mask_tokenizer_256x2.pth` or an empty (0-byte) checkpoint file fail
    in the same one line everywhere. `micro`, a Hub id and an already loaded tokenizer are not checked here.

    Args:
        source (`str`, `Path` or `MaskTokenizer`, *optional*): as in `build_mask_tokenizer`.
        sam2_config (`str` or `Path`, *optional*): with `checkpoint` (the YAML is checked when it is built).
        checkpoint (`str` or `Path`, *optional*): the weights file of the pair.
        what (`str`, *optional*, defaults to `"mask_tokenizer"`): the option that named it, for the message.

    Raises:
        `UsageError`: naming the path (and the file's size when it is empty).

    Example:
    >>> check_mask_tokenizer_files("micro")
    >>> check_mask_tokenizer_files("./no/such/folder")
    Traceback (most recent call last):
    ...
    samtok_rl.errors.UsageError: mask_tokenizer './no/such/folder' does not exist (a local path; a Hub id looks like namespace/name)
    """
    if checkpoint is not None:
        check_local_path(str(checkpoint), "checkpoint")
        if Path(checkpoint).expanduser().is_file():
            _check_weights_file(Path(checkpoint).expanduser(), "mask tokenizer")
        return
    if source is None or isinstance(source, MaskTokenizer) or str(source) == MICRO:
        return
    check_local_path(str(source), what)  # a missing local path is not a Hub id to retry for minutes
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise UsageError(f"{what} folder {str(source)!r} has no {CHECKPOINT_NAME}")
        _check_weights_file(path / CHECKPOINT_NAME, what)
    elif path.is_file():
        _check_weights_file(path, what)


def _weights_path(name: str) -> Path | None:
    """The checkpoint file `name` loads, resolved, when it is here: a local file, a folder's
    `mask_tokenizer_256x2.pth`, or a Hub id's copy in the local Hub cache (never downloaded here); else `None`."""
    if name == MICRO:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if path.is_file():
        return path.resolve()
    if looks_local(name):
        return None
    try:
        cached = try_to_load_from_cache(name, CHECKPOINT_NAME)
    except ValueError:  # not a valid repo id (a `sam2_config:checkpoint` pair): not in the cache either
        return None
    return Path(cached).resolve() if isinstance(cached, str) else None


def recorded_mask_tokenizer(recorded: str) -> tuple[str | None, str | None, str | None]:
    """`(source, sam2_config, checkpoint)` of a mask-tokenizer name as prepared folders and runs record it: a tokenizer
    built from a sam2 config and a checkpoint is recorded as `<sam2 config>:<checkpoint>` (`samtok-rl prepare`);
    anything else (micro, a SAMTok folder, a Hub id, a checkpoint file) is a source.

    Example:
    >>> recorded_mask_tokenizer("micro")
    ('micro', None, None)
    >>> recorded_mask_tokenizer("configs/sam2_l.yaml:weights/mt.pth")
    (None, 'configs/sam2_l.yaml', 'weights/mt.pth')
    """
    if ":" in recorded and not Path(recorded).exists():
        sam2_config, checkpoint = recorded.rsplit(":", 1)
        return None, sam2_config, checkpoint
    return recorded, None, None


def same_mask_tokenizer(recorded: str, named: str) -> bool:
    """Whether two mask-tokenizer names load the same weights.

    The same name does; otherwise both must lead to a checkpoint file here (a local file, a SAMTok folder's
    `mask_tokenizer_256x2.pth`, or a Hub id already in the local Hub cache) with the same content: the SAMTok
    releases share one tokenizer file, so two Hub ids (or a Hub id and a local copy) can be the same tokenizer.
    `micro` equals only itself; a name whose file is not here is taken as different.

    Example:
    >>> same_mask_tokenizer("micro", "micro"), same_mask_tokenizer("micro", "./models/samtok")
    (True, False)
    """
    if str(recorded) == str(named):
        return True
    first, second = _weights_path(str(recorded)), _weights_path(str(named))
    if first is None or second is None:
        return False
    if first == second:
        return True
    # Hashed only when the sizes agree: a different tokenizer is told apart without reading it.
    return first.stat().st_size == second.stat().st_size and sha256_file(first) == sha256_file(second)


def build_mask_tokenizer(
    source: str | Path | MaskTokenizer | None = None,
    sam2_config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    drop_memory_modules: bool = False,
) -> MaskTokenizer:
    """Build the mask tokenizer named by `source`, or by a sam2 YAML + checkpoint pair.

    Args:
        source (`str`, `Path` or `MaskTokenizer`, *optional*):
            `micro` (the seeded micro tokenizer, demo and tests), a SAMTok model folder holding
            `mask_tokenizer_256x2.pth`, a checkpoint file, a Hub id (`MaskTokenizer.from_pretrained`), or an already
            loaded tokenizer (returned as is).
        sam2_config (`str` or `Path`, *optional*): a sam2 YAML, with `checkpoint` (`MaskTokenizer.from_files`).
        checkpoint (`str` or `Path`, *optional*): the weights, `.pth` or `.safetensors`, with `sam2_config`.
        device (`str` or `torch.device`, *optional*): defaults to `default_device()`.
        drop_memory_modules (`bool`, *optional*, defaults to `False`):
            delete SAM 2's memory modules after loading (the tokenizer never runs them).

    Returns:
        `MaskTokenizer` in eval mode.

    Example:
    >>> build_mask_tokenizer("micro", device="cpu").quantizer.codebook_size
    256
    """
    if isinstance(source, MaskTokenizer):
        return source
    check_mask_tokenizer_source(source, sam2_config, checkpoint)
    # A named source only: a sam2_config + checkpoint pair is read by `from_files`, which names a bad YAML or file.
    check_mask_tokenizer_files(source)
    device = default_device() if device is None else device
    if checkpoint is not None:
        return MaskTokenizer.from_files(
            sam2_config, checkpoint, device=device, drop_memory_modules=drop_memory_modules
        )
    if str(source) == MICRO:
        return build_micro_mask_tokenizer(seed=0, device=device)
    return MaskTokenizer.from_pretrained(source, device=device, drop_memory_modules=drop_memory_modules)
