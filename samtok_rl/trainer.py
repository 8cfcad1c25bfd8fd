"""`SamtokGRPOTrainer`: TRL's `GRPOTrainer` with on-policy vLLM rollouts and a resume that restores the weights.

The one thin subclass of TRL's trainer in samtok-rl. It overrides four methods, all pinned to the TRL release in
`samtok_rl.vllm_rollouts.TRL_VERSION` by `tests/test_trl_pins.py`:

- `__init__`: with `use_vllm`, TRL's `VLLMGeneration` is replaced by [`OnPolicyVLLMGeneration`] for the duration of
  TRL's own `__init__`, with the trainer's dtype and pixel limits for the colocated engine.
- `_get_train_sampler`: TRL's `RepeatSampler` with `set_epoch`, so a run resumed in a later epoch draws the same prompt
  order as the uninterrupted run (see [`EpochRepeatSampler`]).
- `_load_from_checkpoint`: full-model checkpoints are reloaded through `from_pretrained` (see below).
- `log`: also appends the logged step's rollouts to `<output_dir>/rollouts.jsonl` (`samtok_rl.rollouts`).

It also swaps transformers' dict-printing log callbacks for one compact line per step and a `metrics.jsonl`
(`samtok_rl.runlog`).
"""

from __future__ import annotations

import functools
import logging
from unittest import mock

import torch
import trl.trainer.grpo_trainer as trl_grpo
from peft import PeftModel
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from samtok_rl.rollouts import append_rollouts, rollout_records
from samtok_rl.runlog import use_compact_logs
from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration, engine_kwargs_for


logger = logging.getLogger(__name__)


class EpochRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose order in epoch `e` depends on `(seed, e)` only.

    TRL's sampler seeds one generator once and draws each epoch's permutation from it in turn, so a resumed run (a new
    sampler) starts again from the first permutation: from the second epoch on, its prompts differ from the
    uninterrupted run's. Here the Trainer's `set_epoch(e)` replays the generator to the `e`-th permutation: the
    uninterrupted run keeps exactly TRL's order, and a resumed run joins it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):  # the permutations of the epochs before this one
                torch.randperm(self.num_samples, generator=self.generator)
        yield from super().__iter__()


class SamtokGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose vLLM rollouts prefill exactly the trainer's prompts and whose resume restores weights.

    Same arguments as TRL's `GRPOTrainer`; `model` must be a loaded model and `processing_class` a VLM processor.
    """

    def __init__(self, model, *args, rollout_prompts: int = 0, **kwargs):
        self.rollout_prompts = rollout_prompts
        self._rollouts_step = -1
        training_args = kwargs.get("args")
        if training_args is None or not training_args.use_vllm:
            super().__init__(model, *args, **kwargs)
        else:
            generation = functools.partial(
                OnPolicyVLLMGeneration,
                engine_kwargs=engine_kwargs_for(kwargs["processing_class"], training_args, model),
            )
            # TRL builds its generation backend by this module-level name inside `__init__`; swapping the name for
            # the call keeps all of TRL's set-up rather than copying it.
            with mock.patch.object(trl_grpo, "VLLMGeneration", generation):
                super().__init__(model, *args, **kwargs)
        use_compact_logs(self)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # TRL's per-completion logs of the latest generation batch are gathered from every process; the main process
        # writes the first prompts' completions before TRL's own logging (which leaves them in place).
        step = self.state.global_step
        if (
            self.rollout_prompts > 0
            and self.model.training
            and self.accelerator.is_main_process
            and self._logs["prompt"]
            and step != self._rollouts_step  # the end-of-training log repeats the last step's
        ):
            self._rollouts_step = step
            records = rollout_records(
                self._logs, step, self.num_generations, self.rollout_prompts, self.reward_weights.tolist()
            )
            append_rollouts(self.args.output_dir, records)
        super().log(logs, start_time)

    def _get_train_sampler(self, dataset=None):
        stock = super()._get_train_sampler(dataset)
        return EpochRepeatSampler(
            data_source=stock.data_source,
            mini_repeat_count=stock.mini_repeat_count,
            batch_size=stock.batch_size,
            repeat_count=stock.repeat_count,
            shuffle=stock.shuffle,
            seed=stock.seed,
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Reload full-model checkpoints through `from_pretrained`.

        `save_pretrained` writes Qwen-VL checkpoints in the original key layout (`visual.*`, `model.layers.*`), but
        transformers 5.17's `Trainer._load_from_checkpoint` loads them with a plain non-strict `load_state_dict`,
        which matches no key: every weight stays at its initial value and the run only warns. `from_pretrained`
        applies the model's key conversion. PEFT adapters, FSDP and DeepSpeed checkpoints keep the stock path.
        """
        model = self.model if model is None else model
        if isinstance(model, PeftModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("loading the model weights of %s with from_pretrained", resume_from_checkpoint)
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
