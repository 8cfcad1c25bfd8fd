"""A training run owns its `output_dir`: one run at a time, logs that never mix, and a resume that is the same run.

- `lock_output_dir`: an exclusive `flock` on `<output_dir>/.samtok_rl.lock`, held by the main process until it exits.
  The kernel drops it when the process dies, however it dies, so a dead run's lock never blocks the next one; the
  file records who holds it, for the message a second run gets.
- `cut_logs_to_step`: a resumed run continues the logs at its checkpoint's step. Records of later steps (written by
  the interrupted run after that checkpoint) are moved to `<file>.superseded`, not deleted.
- `run_changes`: what a resume would change in the run its checkpoint belongs to (dataset, task, rewards and weights,
  group size, model), compared with that run's `samtok_run.json`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from samtok_rl.errors import UsageError
from samtok_rl.files import read_json_lines, write_json_atomic


LOCK_FILE = ".samtok_rl.lock"
# The settings that make a run what it is: a resume may not change them unless told to (`accept_resume_changes`).
RUN_IDENTITY = ("dataset", "task", "model", "rewards", "reward_weights", "num_generations")

_held: dict[str, int] = {}  # output_dir -> the open descriptor holding its lock (closed when the process exits)


def lock_output_dir(output_dir: str | Path) -> None:
    """Take `output_dir` for this process, or stop in one line naming the run that holds it.

    Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> lock_output_dir(folder); lock_output_dir(folder)  # taking it again from the same process is a no-op
    """
    out = Path(output_dir)
    key = str(out.resolve())
    if key in _held:
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise UsageError(
            f"output_dir {str(out)!r} is in use by another training run ({holder}): wait for it or choose another "
            "output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _held[key] = fd


def cut_logs_to_step(output_dir: str | Path, step: int, names: tuple[str, ...]) -> dict[str, int]:
    """Keep the records of steps `<= step` in each JSONL log of `output_dir`; move the others to `<name>.superseded`.

    Returns:
        `dict[str, int]`: per file, how many records were moved (files with none moved are left untouched).

    Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\\n" for s in (1, 2, 3, 2)))
    >>> cut_logs_to_step(folder, 1, ("metrics.jsonl",))
    {'metrics.jsonl': 3}
    >>> (folder / "metrics.jsonl").read_text()
    '{"step": 1}\\n'
    """
    moved = {}
    for name in names:
        path = Path(output_dir) / name
        records, torn = read_json_lines(path, key="step")
        # Later steps, and lines that are not records (a write torn by the kill), belong to the interrupted run.
        later = [json.dumps(r, allow_nan=True) for r in records if r["step"] > step] + [line for _, line in torn]
        if not later:
            continue
        with open(path.with_name(name + ".superseded"), "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in later))
        keep = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records if r["step"] <= step)
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(keep, encoding="utf-8")
        os.replace(tmp, path)
        moved[name] = len(later)
    return moved


def run_changes(previous: dict, current: dict) -> list[str]:
    """The run settings (`RUN_IDENTITY`) that differ between a checkpoint's run and the resuming one.

    Example:
    >>> run_changes({"dataset": "a", "num_generations": 2}, {"dataset": "a", "num_generations": 4})
    ['num_generations 2 -> 4']
    """
    return [
        f"{key} {previous.get(key)} -> {current.get(key)}"
        for key in RUN_IDENTITY
        if previous.get(key) != current.get(key)
    ]


def read_run(path: Path) -> dict | None:
    """A `samtok_run.json` (`None` when there is none)."""
    return json.loads(path.read_text()) if path.is_file() else None


def record_run(path: Path, info: dict, previous: dict | None, resumed_at: int | None, changes: list[str]) -> None:
    """Write `samtok_run.json`: `info`, and the accepted resume changes of the run it continues plus this one's."""
    history = list((previous or {}).get("resume_changes", [])) if resumed_at is not None else []
    if changes:
        history.append({"step": resumed_at, "changes": changes})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**info, "resume_changes": history})
