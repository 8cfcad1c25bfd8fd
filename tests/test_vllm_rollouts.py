"""The parts of the on-policy vLLM override that need no engine: what is synced, and what the engine is told."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from peft import LoraConfig, get_peft_model

from samtok_rl.tiny import load_tiny_vlm
from samtok_rl.vllm_rollouts import engine_kwargs_for, synced_module_prefixes


def test_frozen_vision_tower_is_not_resynced():
    model, _ = load_tiny_vlm("qwen2_5_vl")
    model.model.visual.requires_grad_(False)
    prefixes = synced_module_prefixes(model)
    assert prefixes and not any("visual" in p for p in prefixes)
    assert "model.language_model.layers.0.self_attn.q_proj" in prefixes
    assert "lm_head" in prefixes and "model.language_model.embed_tokens" in prefixes
    # Every trainable parameter's module is kept, nothing else.
    owners = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert prefixes == owners


def test_lora_syncs_the_wrapped_layers_under_the_names_trl_sends():
    model, _ = load_tiny_vlm("qwen2_5_vl")
    model.requires_grad_(False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    prefixes = synced_module_prefixes(peft_model)
    layers = len(model.model.language_model.layers)
    # k_proj too: vLLM stacks it with q_proj and v_proj into one layer, which a sync must send whole.
    assert prefixes == {
        f"model.language_model.layers.{i}.self_attn.{proj}"
        for i in range(layers)
        for proj in ("q_proj", "k_proj", "v_proj")
    }


def test_a_fused_module_brings_the_rest_of_its_vllm_layer():
    """vLLM stacks q/k/v into `qkv_proj` and gate/up into `gate_up_proj` and rebuilds such a layer from the parts a
    sync sends: one trainable part sends its whole group, in the language model and the vision tower alike."""
    model, _ = load_tiny_vlm("qwen2_5_vl")
    model.requires_grad_(False)
    text, vision = "model.language_model.layers.1", "model.visual.blocks.0"
    for name in ("self_attn.k_proj", "self_attn.o_proj", "mlp.up_proj"):
        model.get_submodule(f"{text}.{name}").requires_grad_(True)
    model.get_submodule(f"{vision}.mlp.gate_proj").requires_grad_(True)
    assert synced_module_prefixes(model) == {
        f"{text}.self_attn.q_proj", f"{text}.self_attn.k_proj", f"{text}.self_attn.v_proj",
        f"{text}.self_attn.o_proj",  # not fused: alone
        f"{text}.mlp.gate_proj", f"{text}.mlp.up_proj",
        f"{vision}.mlp.gate_proj", f"{vision}.mlp.up_proj",
    }  # fmt: skip


def test_engine_gets_the_trainers_dtype_and_pixel_limits():
    _, processor = load_tiny_vlm("qwen2_5_vl")
    processor.image_processor.size["longest_edge"] = 1605632
    fp32 = SimpleNamespace(dtype=torch.float32)
    assert engine_kwargs_for(processor, SimpleNamespace(bf16=True, fp16=False), fp32)["dtype"] == "bfloat16"
    kwargs = engine_kwargs_for(processor, SimpleNamespace(bf16=False, fp16=False), fp32)
    assert kwargs == {"dtype": "float32", "mm_processor_kwargs": {"min_pixels": 784, "max_pixels": 1605632}}


def _walker(model, enable_sleep_mode: bool):
    """`OnPolicyVLLMGeneration`'s weight walk without an engine: TRL's own walk over `model` on one CPU process."""
    from accelerate import Accelerator
    from trl.distributed import DistributedBackend

    from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration

    generation = OnPolicyVLLMGeneration.__new__(OnPolicyVLLMGeneration)
    generation.model, generation._dist = model, DistributedBackend(Accelerator(cpu=True))
    generation.enable_sleep_mode, generation._sync_prefixes = enable_sleep_mode, synced_module_prefixes(model)
    return generation


def test_later_syncs_skip_the_frozen_tower_unless_sleep_mode_dropped_it():
    model, _ = load_tiny_vlm("qwen2_5_vl")
    model.model.visual.requires_grad_(False)
    everything = {n for n, _ in model.named_parameters()}
    sent = {n for n, _ in _walker(model, enable_sleep_mode=False)._iter_named_params()}
    assert sent == {n for n in everything if not n.startswith("model.visual.")}
    # Sleep level 2 frees vLLM's weights after every generation: each sync must bring the frozen ones back too.
    assert {n for n, _ in _walker(model, enable_sleep_mode=True)._iter_named_params()} == everything


def test_lora_merge_unmerge_leaves_the_base_weights_exact():
    """TRL merges the adapters into the base weights and unmerges them at every sync; in bf16 that moves them."""
    from samtok_rl.vllm_rollouts import base_weights_restored

    model, _ = load_tiny_vlm("qwen2_5_vl")
    peft_model = get_peft_model(
        model.bfloat16(), LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    )
    g = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # a trained adapter (PEFT starts B at zero, which merges exactly)
            param.data = (torch.randn(param.shape, generator=g) * 0.05).bfloat16()

    def base():
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".base_layer." in n}

    before = base()
    peft_model.merge_adapter()
    peft_model.unmerge_adapter()
    drifted = base()
    assert any(not torch.equal(drifted[n], before[n]) for n in before)  # the failure the restore prevents

    with base_weights_restored(peft_model):
        peft_model.merge_adapter()
        peft_model.unmerge_adapter()
    after = base()
    assert all(torch.equal(after[n], drifted[n]) for n in before)
