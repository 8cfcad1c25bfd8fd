"""Small file helpers every module shares: the cache root, atomic writes and folder publication, opening images."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from samtok_rl.errors import UsageError


__all__ = [
    "cache_dir",
    "check_local_path",
    "looks_local",
    "open_rgb",
    "read_json_lines",
    "save_checkpoint",
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


def open_rgb(path: str | Path) -> Image.Image:
    """Read an image file as RGB (the file is closed before returning)."""
    with Image.open(path) as image:
        return image.convert("RGB")
