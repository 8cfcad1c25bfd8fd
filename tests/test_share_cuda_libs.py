"""scripts/share_cuda_libs.py: the CUDA wheels hardlinked from .venv into .venv-vllm, whole or not at all."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "share_cuda_libs.py"


@pytest.fixture(scope="module")
def share():
    spec = importlib.util.spec_from_file_location("share_cuda_libs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_share_the_bytes(share, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "nvidia" / "lib").mkdir(parents=True)
    (src / "nvidia" / "lib" / "libx.so").write_bytes(b"x" * 100)
    (src / "nvidia_x-1.dist-info").mkdir()
    (src / "nvidia_x-1.dist-info" / "RECORD").write_text("")
    files = [Path("nvidia/lib/libx.so"), Path("nvidia_x-1.dist-info/RECORD")]
    assert share.link_dist(files, src, dst) == 100
    linked = dst / "nvidia" / "lib" / "libx.so"
    assert linked.read_bytes() == b"x" * 100
    assert os.stat(linked).st_ino == os.stat(src / "nvidia" / "lib" / "libx.so").st_ino


def test_a_failed_link_leaves_nothing_of_that_wheel(share, tmp_path):
    """Injected fault: the second file cannot be linked (its source is gone). The first link is removed again, so
    the target never holds a dist-info without its files (pip would take the wheel as installed)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "nvidia_x-1.dist-info").mkdir(parents=True)
    (src / "nvidia_x-1.dist-info" / "RECORD").write_text("")
    files = [Path("nvidia_x-1.dist-info/RECORD"), Path("nvidia/lib/missing.so")]
    with pytest.raises(FileNotFoundError):
        share.link_dist(files, src, dst)
    assert not (dst / "nvidia_x-1.dist-info" / "RECORD").exists()


def test_cli_refuses_a_target_that_is_not_a_folder(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"share_cuda_libs: target site-packages {tmp_path / 'nowhere'} is not a folder"


def test_cli_links_this_environments_cuda_wheels_whole(tmp_path):
    """Run against the test environment itself: every wheel it reports as linked has all its files in the target."""
    import importlib.metadata as md

    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=True)
    if "not linked" in out.stdout:
        pytest.skip(out.stdout.strip())  # tmp_path on another filesystem than site-packages: no hardlinks
    said = re.match(r"share_cuda_libs: linked (\d+) wheels \([\d.]+ GiB\): ([^;]*);", out.stdout)
    names = said.group(2).split()
    assert int(said.group(1)) == len(names)
    found = {d.metadata["Name"]: d for d in md.distributions(path=[str(tmp_path)])}
    for spec in names:
        name, version = spec.split("==")
        assert found[name].version == version
        files = [f for f in found[name].files if not str(f).startswith("..")]
        assert files and all((tmp_path / f).is_file() for f in files), name
