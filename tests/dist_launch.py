"""`accelerate launch --config_file recipes/accelerate/<config>.yaml tests/dist_launch.py <train args>`: `samtok-rl
train` that writes, on every process, what `tests/test_dist.py` checks, to `$SAMTOK_DIST_DIR`:

- `weights-<rank>.jsonl`: after each optimizer step, a sha256 of every parameter's *full* value (gathered under ZeRO-3,
  `full_tensor()` under FSDP2), so the ranks can be compared step by step;
- `final-<rank>.pt`: the full weights after the last step (the saved model and a resumed run are compared with them);
- `sync-<rank>.jsonl`: per step, what a weight sync into vLLM would gather and send: samtok-rl's own sync walk
  (`OnPolicyVLLMGeneration._iter_named_params`) run on the trained model with no engine behind it (vLLM cannot be
  installed beside this torch), the bytes it had DeepSpeed / FSDP gather counted at the gather itself.

FSDP on CPU: accelerate 1.15 turns FSDP on only for GPU-type backends (`accelerate/state.py`: the FSDP branch of
`AcceleratorState.__init__` sits under MULTI_GPU / MULTI_XPU / ..., MULTI_CPU is left out), so on a CPU the shipped
`fsdp2.yaml` would silently run as DDP. torch's `fully_shard` itself works on CPU with gloo. `fsdp_on_cpu` makes the
one switch accelerate makes on a GPU backend, right after its set-up: distributed type FSDP with the plugin the YAML
built. Everything after it (TRL's and transformers' FSDP2 preparation, the reference model, checkpoints, the YAML's
settings) is the code a GPU run executes. The YAML is unchanged. samtok-rl refuses the silent DDP fallback without
this hook (`samtok_rl.checks.check_launch_took_effect`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from transformers import TrainerCallback

from samtok_rl import grpo, vllm_rollouts
from samtok_rl.trainer import SamtokGRPOTrainer
from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration, vllm_module_name


OUT = Path(os.environ.get("SAMTOK_DIST_DIR", "."))


def fsdp_on_cpu() -> None:
    """After accelerate's own set-up, switch a CPU (gloo) launch that asked for FSDP to FSDP (see the module doc)."""
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def full_weights(model, accelerator) -> dict[str, torch.Tensor]:
    """Every parameter's full value on this process (a collective under ZeRO-3 and FSDP2: all processes call it)."""
    named = list(model.named_parameters())
    if accelerator.state.deepspeed_plugin is not None and accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            return {n: p.detach().clone() for n, p in named}
    if accelerator.distributed_type == DistributedType.FSDP:
        return {n: p.full_tensor().detach().clone() for n, p in named}
    return {n: p.detach().clone() for n, p in named}


def local_numel(param) -> int:
    """How many of the parameter's elements this process holds (its shard under ZeRO-3 and FSDP2)."""
    if hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3's partition
        return param.ds_tensor.numel()
    if hasattr(param, "to_local"):  # FSDP2's DTensor
        return param.to_local().numel()
    return param.numel()


def full_numel(param) -> int:
    return param.ds_numel if hasattr(param, "ds_numel") else param.numel()


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


class EngineLessSync(OnPolicyVLLMGeneration):
    """The product's sync walk with no vLLM engine: what the colocated sync would gather and hand to vLLM."""

    def _init_vllm(self):
        self.sent: list[tuple[str, int]] = []

    def _sync_colocated(self):
        self.walked_modules = self._sync_prefixes  # None: the first, full sync
        self.sent = [(name, tensor.numel() * tensor.element_size()) for name, tensor in self._iter_named_params()]


class GatherCounter:
    """Bytes of parameters that DeepSpeed ZeRO-3 or FSDP2 materialised in full on this process."""

    def __init__(self):
        self.bytes = 0

    def __enter__(self):
        self._patches = []
        if "deepspeed" in sys.modules:
            import deepspeed
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            gathered = deepspeed.zero.GatheredParameters

            def counting(params, *args, **kwargs):
                params = [params] if isinstance(params, torch.nn.Parameter) else list(params)
                self.bytes += sum(p.ds_numel * p.element_size() for p in params
                                  if getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE)  # fmt: skip
                return gathered(params, *args, **kwargs)

            self._patches.append(mock.patch.object(deepspeed.zero, "GatheredParameters", counting))
        from torch.distributed.tensor import DTensor

        full_tensor = DTensor.full_tensor

        def counting_full(tensor, *args, **kwargs):
            out = full_tensor(tensor, *args, **kwargs)
            self.bytes += out.numel() * out.element_size()
            return out

        self._patches.append(mock.patch.object(DTensor, "full_tensor", counting_full))
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in self._patches:
            patch.stop()


class Spy(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.sync = None

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        accelerator, rank = trainer.accelerator, trainer.accelerator.process_index
        weights = full_weights(trainer.model, accelerator)
        with open(OUT / f"weights-{rank}.jsonl", "a") as f:
            params = list(trainer.model.parameters())
            record = {"step": state.global_step, "digests": {n: digest(t) for n, t in weights.items()},
                      "local_numel": sum(map(local_numel, params)), "total_numel": sum(map(full_numel, params))}  # fmt: skip
            f.write(json.dumps(record) + "\n")
        if state.global_step == state.max_steps:
            torch.save(weights, OUT / f"final-{rank}.pt")
        if self.sync is None:
            self.sync = EngineLessSync(model=trainer.model, accelerator=accelerator,
                                       processing_class=trainer.processing_class)  # fmt: skip
        with GatherCounter() as counter, mock.patch.object(vllm_rollouts, "_is_cpu_engine", lambda: False):
            self.sync.sync_weights()
        # The full size of every parameter (adapters included) of the modules this sync walked.
        walked = self.sync.walked_modules
        module_bytes = sum(full_numel(p) * p.element_size() for n, p in trainer.model.named_parameters()
                           if walked is None or vllm_module_name(n) in walked)  # fmt: skip
        with open(OUT / f"sync-{rank}.jsonl", "a") as f:
            record = {"step": state.global_step, "gathered_bytes": counter.bytes, "tensors": len(self.sync.sent),
                      "sent_bytes": sum(b for _, b in self.sync.sent), "module_bytes": module_bytes,
                      "names": [n for n, _ in self.sync.sent]}  # fmt: skip
            f.write(json.dumps(record) + "\n")


class SpyTrainer(SamtokGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(Spy(self))


if __name__ == "__main__":
    fsdp_on_cpu()
    grpo.SamtokGRPOTrainer = SpyTrainer
    grpo.main(sys.argv[1:])
