"""vLLM for real: colocated GRPO and a generation server, on CPU in `.venv-vllm` (`make test-vllm`).

These need the vllm-cpu environment (`scripts/install_vllm_env.sh`); the default test run deselects them. The NCCL
weight sync of server mode needs CUDA and is covered by the `gpu` test at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from samtok_rl.prepare import prepare, read_source
from samtok_rl.tiny import build_tiny_vlm


pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

ROOT = Path(__file__).resolve().parents[1]
VLLM_ENV = {
    **os.environ,
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; plenty for the tiny models
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class FixedCodes:
    """Deterministic stand-in for the mask tokenizer in data preparation (no SAM2 forward)."""

    def encode(self, image, masks):
        k = np.arange(len(masks), dtype=np.int64)
        return np.stack([(k * 37 + 11) % 256, (k * 91 + 5) % 256], axis=1)


@pytest.fixture(scope="module")
def gres_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("prepared") / "gres"
    prepare(read_source("gres", sample=True), "gres", out, FixedCodes, tokenizer_id="fixed", progress=False)
    return str(out)


def test_colocate_grpo_two_steps(tmp_path, gres_dir):
    import pandas as pd

    build_tiny_vlm("qwen2_5_vl")
    # A subprocess, as users launch it: vLLM's engine core is a spawned process that re-imports __main__.
    cmd = [
        sys.executable, "-m", "samtok_rl.grpo", "--config", str(ROOT / "recipes/demo.yaml"),
        "--output_dir", str(tmp_path), "--dataset", gres_dir, "--reward_funcs", "format_reward",  # textual only
        "--max_steps", "2", "--save_strategy", "no", "--max_completion_length", "16",
        "--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
        "--vllm_max_model_length", "512", "--log_completions",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "samtok-rl: 2 steps" in proc.stdout
    tables = sorted((tmp_path / "completions").glob("*.parquet"))
    assert tables, "log_completions wrote no table"
    rows = pd.concat([pd.read_parquet(t) for t in tables])["completion"].tolist()
    completions = [row[0]["content"] for row in rows]  # conversational: one assistant message per completion
    assert completions and all(isinstance(c, str) and c for c in completions)
    # Random tiny weights: about half the vocabulary is mask tokens, so they show up in the sampled text (they are
    # non-special, so TRL's skip_special_tokens decode keeps them).
    assert any("<|mt_" in c for c in completions)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server():
    model = build_tiny_vlm("qwen2_5_vl")
    port = _free_port()
    env = {
        **VLLM_ENV,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-server-{port}.log", "w")
    cmd = [
        "bash", str(ROOT / "recipes/vllm/serve.sh"), str(model),
        "--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16",
    ]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield model, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_server_generation_with_images(vllm_server):
    from PIL import Image
    from transformers import AutoProcessor
    from trl.data_utils import prepare_multimodal_messages
    from trl.generation.vllm_client import VLLMClient

    from samtok_rl.data import sample_paths
    from samtok_rl.prompts import conversation, gres_question

    model, base_url = vllm_server
    client = VLLMClient(base_url=base_url, connection_timeout=600)
    assert client.get_world_size() == 1
    info = client.get_server_info()  # dev mode is on: TRL reads these at start-up
    assert "logprobs_mode" in str(info)

    processor = AutoProcessor.from_pretrained(model, padding_side="left")
    image = Image.open(sample_paths().images / "chelsea.jpg").convert("RGB")
    prompt = prepare_multimodal_messages(conversation(gres_question("the cat")), images=[image])
    prompt_ids = processor.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ][0]
    features = client.image_features([[image]])[0]
    # Re-point the features at the trainer-side run of image tokens, as TRL's server mode does.
    start = prompt_ids.index(processor.image_token_id)
    length = prompt_ids.count(processor.image_token_id)
    features = {**features, "mm_placeholders": {"image": [{"offset": start, "length": length}]}}

    t0 = time.perf_counter()
    out = client.generate(prompts=[prompt_ids], features=[features], n=2, max_tokens=8, temperature=1.0)
    assert time.perf_counter() - t0 < 120
    assert len(out["completion_ids"]) == 2 and all(len(c) > 0 for c in out["completion_ids"])
    assert len(out["logprobs"][0]) == len(out["completion_ids"][0])


@pytest.mark.gpu
def test_nccl_weight_sync(vllm_server):
    """Server-mode training pushes weights over NCCL after each step; that needs CUDA on both sides."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the NCCL weight transfer needs a CUDA device")
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from trl.generation.vllm_client import VLLMClient

    model_dir, base_url = vllm_server
    client = VLLMClient(base_url=base_url, connection_timeout=600)
    client.init_communicator(device=0)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir).to("cuda:0")
        tok = AutoTokenizer.from_pretrained(model_dir)
        target = tok.convert_tokens_to_ids("<|mt_0042|>")
        with torch.no_grad():  # make greedy decoding emit one known token
            model.lm_head.weight.zero_()
            model.lm_head.weight[target] = 1.0
            model.model.language_model.norm.weight.fill_(1.0)
        client.update_model_params(model)
        client.reset_prefix_cache()
        out = client.generate(prompts=[tok("hello")["input_ids"]], n=1, max_tokens=3, temperature=0.0)
        assert out["completion_ids"][0] == [target] * 3
    finally:
        client.close_communicator()
