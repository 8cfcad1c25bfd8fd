"""Small file helpers every module shares: the cache root, atomic writes and folder publication, opening images."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from samtok_rl.errors import UsageError


__all__ = [
    "cache_dir",
    "check_image_mode",
    "check_local_path",
    "looks_local",
    "open_rgb",
    "read_json_lines",
    "save_checkpoint",
    "to_rgb",
    "write_json_atomic",
]


def cache_dir(name: str) -> Path:
    """`$SAMTOK_RL_CACHE/<name>`, else `~/.cache/samtok_rl/<name>`: where built models and prepared samples are kept.

    Example:
    >>> cache_dir("tiny").name
    'tiny'
    """
    root = os.environ.get("SAMTOK_RL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "samtok_rl") / name


def looks_local(name: str) -> bool:
    """Whether `name` can only be a local path, not a Hub id (`namespace/name`).

    Example:
    >>> [looks_local(n) for n in ("zhouyik/Qwen3-VL-8B-SAMTok", "./ckpt", "/data/m", "a/b/c", "w.pth", "micro")]
    [False, True, True, True, True, False]
    """
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or name.endswith((".pth", ".pt", ".safetensors", ".yaml", ".yml", ".json"))
    )


def check_local_path(name: str, what: str) -> None:
    """Refuse a local-looking path that does not exist at once (the Hub would retry it for minutes)."""
    if looks_local(str(name)) and not Path(name).expanduser().exists():
        raise UsageError(f"{what} {str(name)!r} does not exist (a local path; a Hub id looks like namespace/name)")


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse an `output_dir` that is a file, or lies under one, before any work (its first write would fail there).

    Example:
    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "notes.txt"; _ = f.write_text("x")
    >>> check_output_dir(f / "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    samtok_rl.errors.UsageError: output_dir '.../notes.txt/out' lies under the file '.../notes.txt', not in a folder
    """
    path = Path(output_dir).expanduser()
    for above in (path, *path.parents):
        if not above.exists():
            continue
        if above.is_dir():
            return
        if above == path:
            raise UsageError(f"output_dir {str(output_dir)!r} is a file, not a folder")
        raise UsageError(f"output_dir {str(output_dir)!r} lies under the file {str(above)!r}, not in a folder")


def check_model_folder(name: str, what: str) -> None:
    """A model named as a local path must exist and, as a folder, hold a `config.json` (else loading it fails late,
    in a tokenizer or Hub error)."""
    check_local_path(name, what)
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"{what} {name!r} is a folder without config.json: not a model checkpoint")


def read_json_lines(path: Path, key: str | None = None) -> tuple[list[dict], list[tuple[int, str]]]:
    """The JSON-object lines of an append-only JSONL file, and the lines that are not (a torn write from an interrupted
    run, or damage) as `(line number, text)`, for the caller to report. Blank lines are skipped; with `key`, an object
    without that key counts as not a record. A missing file gives no lines.

    Example:
    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = f.write_text('{"id": 1}\\n\\n{"x": 2}\\n{"id": 3, "t')
    >>> read_json_lines(f, key="id")
    ([{'id': 1}], [(3, '{"x": 2}'), (4, '{"id": 3, "t')])
    """
    if not path.is_file():
        return [], []
    records, rejected = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and (key is None or key in record):
            records.append(record)
        else:
            rejected.append((number, line))
    return records, rejected


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 16 MiB blocks (a checkpoint or a 2 GB parquet file never in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write `payload` as JSON so that a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # atomic on POSIX


def save_checkpoint(model, processor, final: Path) -> Path:
    """Save a model and its processor to `final` in one step: written beside it, then renamed into place.

    A crash never leaves a half-written checkpoint that later runs would take for a finished one. A rename onto a
    non-empty folder fails: when another process published the same build first, its folder stays (the cached builds
    are deterministic, so it is as good); any other failure is raised.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp folders are private; cached checkpoints are read like any other
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# Modes whose values PIL's own `convert("RGB")` keeps: 8 bits per channel. Alpha is dropped, not composited: PIL's
# rule, which transformers' `convert_to_rgb` (the VLM processor's) applies too, so policy and mask tokenizer see the
# same pixels. P/PA go through their palette, CMYK/YCbCr/LAB/HSV through PIL's formulas.
_PIL_RGB_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# 16-bit unsigned grey (PNG, TIFF, PPM, JPEG 2000, FITS): PIL's `convert("RGB")` clips these at 255.
_16_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# TIFF BitsPerSample: the one bit depth PIL reports from a header.
_TIFF_BITS_PER_SAMPLE = 258
_RESAVE = "save it as an 8- or 16-bit image"


def check_image_mode(image: Image.Image, source: str | Path) -> None:
    """Refuse, from the header alone, an image that `to_rgb` cannot read by value (mode F, a 32-bit integer TIFF,
    a mode not listed there); the one-line `UsageError` names `source` and the mode.

    Example:
    >>> try:
    ...     check_image_mode(Image.new("F", (2, 2)), "depth.tif")
    ... except UsageError as err:
    ...     print(err)
    depth.tif: image mode F (32-bit float) has no single 8-bit reading; save it as an 8- or 16-bit image
    """
    mode = image.mode
    if mode in _PIL_RGB_MODES or mode in _16_BIT_MODES or mode == "La":
        return
    if mode == "F":
        raise UsageError(f"{source}: image mode F (32-bit float) has no single 8-bit reading; {_RESAVE}")
    if mode == "I":
        bits = getattr(image, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE)
        bits = max(bits) if isinstance(bits, tuple) else bits
        if bits is not None and bits > 16:
            raise UsageError(
                f"{source}: image mode I with {bits} bits per sample (TIFF) has no single 8-bit reading; {_RESAVE}"
            )
        return
    raise UsageError(f"{source}: image mode {mode} is not one samtok-rl reads; {_RESAVE}")


def to_rgb(image: Image.Image, source: str | Path) -> Image.Image:
    """The pixels of any image samtok-rl reads (dataset, training, eval, mask tokenizer), as 8-bit RGB by value.

    - RGB is returned as is; 1, L, LA, P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB and HSV are converted by PIL
      (`convert("RGB")`: alpha dropped, not composited; La goes through LA);
    - 16-bit grey (I;16, I;16B, I;16L, I;16N) is scaled to 0..255: value / 257, rounded (65535 -> 255, 61420 -> 239).
      PIL's own conversion clips it at 255, which turns most of a 16-bit photo white;
    - mode I (32-bit integers: what PIL gives 16-bit PGM/PPM files, their values rescaled to 0..65535, and 32-bit
      TIFF/FITS files) is read on the same 16-bit scale when every value lies in 0..65535 and no TIFF header
      declares more than 16 bits per sample; otherwise it is refused;
    - mode F (floats) and any other mode are refused: a one-line `UsageError` naming `source` and the mode.

    Example:
    >>> import numpy as np
    >>> grey16 = Image.fromarray(np.array([[0, 257, 61420, 65535]], dtype=np.uint16))
    >>> grey16.mode, np.asarray(to_rgb(grey16, "a.png"))[0, :, 0].tolist()
    ('I;16', [0, 1, 239, 255])
    """
    check_image_mode(image, source)
    if image.mode == "RGB":
        return image
    if image.mode == "La":
        image = image.convert("LA")  # PIL converts premultiplied La to LA but not straight to RGB
    if image.mode in _PIL_RGB_MODES:
        return image.convert("RGB")
    values = np.asarray(image).astype(np.int64)  # I;16*: uint16 of either byte order; I: int32
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise UsageError(
            f"{source}: image mode I holds values {low}..{high}, outside the 16-bit range 0..65535 it is read on; "
            f"{_RESAVE}"
        )
    grey = ((values + 128) // 257).astype(np.uint8)  # round(value / 257): 0..65535 onto 0..255
    return Image.fromarray(grey).convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB by value (`to_rgb`); the file is closed before returning."""
    with Image.open(path) as image:
        rgb = to_rgb(image, path)
        return rgb.copy() if rgb is image else rgb  # an RGB file's own image would be closed with the file
