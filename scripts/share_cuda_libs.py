"""Hardlink the CUDA runtime wheels of this environment into another environment's site-packages.

Run with the python of the environment that has them (.venv):

    .venv/bin/python scripts/share_cuda_libs.py .venv-vllm/lib/python3.11/site-packages

Both environments carry PyPI's torch, a CUDA build, on CPU-only machines: torch 2.14.1 in .venv and 2.13.0 in
.venv-vllm. Their CUDA runtime wheels (nvidia-*, cuda-*) are mostly the same versions (cuBLAS, cuFFT, cuSOLVER, ...;
cuDNN and NCCL differ), about 2 GB of identical files that a CI machine with a small disk should not store twice.
Linked before the torch install in the target, every wheel whose version that torch pins is already satisfied; pip
replaces the others. pip unlinks a file before writing one at its path (pip's wheel installer), so neither
environment ever writes into the other's files.

A distribution is linked whole or not at all (never a dist-info without its files); one that is already in the
target is left alone. Linking needs one filesystem: where it fails (another device, no hardlinks), nothing is
linked and pip installs as usual. Prints what it linked and the bytes not stored twice.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
from pathlib import Path


CUDA_WHEEL = re.compile(r"^(nvidia|cuda)[-_]", re.IGNORECASE)


def dist_files(dist: md.Distribution, site: Path) -> list[Path]:
    """The files of one distribution inside site-packages (RECORD entries such as ../../bin/x are left out)."""
    out = []
    for f in dist.files or []:
        path = (site / f).resolve()
        if path.is_relative_to(site) and path.is_file():
            out.append(path.relative_to(site))
    return out


def link_dist(files: list[Path], src: Path, dst: Path) -> int:
    """Hardlink every file or none: on any failure the links made so far are removed and the error re-raised."""
    made: list[Path] = []
    try:
        for rel in files:
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src / rel, target)
            made.append(target)
    except OSError:
        for target in made:
            target.unlink(missing_ok=True)
        raise
    return sum((src / rel).stat().st_size for rel in files)


def main(target: str) -> None:
    dst = Path(target).resolve()
    if not dst.is_dir():
        raise SystemExit(f"share_cuda_libs: target site-packages {target} is not a folder")
    site = Path(md.distribution("pip").locate_file("")).resolve()
    linked, shared = [], 0
    for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
        name = dist.metadata["Name"]
        if not CUDA_WHEEL.match(name):
            continue
        files = dist_files(dist, site)
        if not files or any((dst / rel).exists() for rel in files):
            continue  # nothing to share, or the target has its own copy: leave it to pip
        try:
            shared += link_dist(files, site, dst)
        except OSError as err:
            print(f"share_cuda_libs: not linked ({name}: {err}); pip installs the CUDA wheels as usual")
            return
        linked.append(f"{name}=={dist.version}")
    print(
        f"share_cuda_libs: linked {len(linked)} wheels ({shared / 2**30:.2f} GiB): {' '.join(linked)};"
        " pip replaces those that the target's torch pins to another version"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/share_cuda_libs.py TARGET_SITE_PACKAGES")
    main(sys.argv[1])
