"""`SamtokGRPOTrainer`: TRL's `GRPOTrainer` with on-policy vLLM rollouts and a resume that restores the weights.

The one thin subclass of TRL's trainer in samtok-rl. It overrides ten methods, all pinned to the TRL release in
`samtok_rl.vllm_rollouts.TRL_VERSION` by `tests/test_trl_pins.py`:

- `__init__`: with `use_vllm`, TRL's `VLLMGeneration` is replaced by [`OnPolicyVLLMGeneration`] for the duration of
  TRL's own `__init__`, with the trainer's dtype and pixel limits for the colocated engine.
- `_get_train_sampler`: TRL's `RepeatSampler` with `set_epoch`, so a run resumed in a later epoch draws the same prompt
  order as the uninterrupted run (see [`EpochRepeatSampler`]).
- `_load_from_checkpoint` and `_load_best_model`: full-model checkpoints are reloaded through `from_pretrained` (see
  below), on resume and for `load_best_model_at_end`.
- `_load_optimizer_and_scheduler`: with several CPU processes the optimizer state is restored to the CPU.
- `evaluate`: with a benchmark split (`eval_dataset` in the recipe), the benchmark's evaluation
  (`samtok_rl.training_eval`) instead of TRL's.
- `log`: also appends the logged step's rollouts to `<output_dir>/rollouts.jsonl` (`samtok_rl.rollouts`).
- `_generate_single_turn`: completions are cut before a sampled vision placeholder token (`samtok_rl.completions`);
  with guided groups on, the reference answer takes the last slot of each group without a right answer
  (`samtok_rl.guided`).
- `_calculate_rewards` (records the gathered rewards) and `_generate_and_score_completions` (more rounds, then the
  informative groups only): dynamic sampling, when it is on (`samtok_rl.dynamic_sampling`); each round's output
  also gets the guided completions' treatment (importance-sampling ratio 1, the chosen shaping, their logs).

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
from trl.trainer.utils import RepeatSampler, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from samtok_rl.checks import check_launch_took_effect
from samtok_rl.completions import cut_at_placeholders
from samtok_rl.dynamic_sampling import DynamicSampling, group_reward_std, merge_rounds, refill_indices, select_groups
from samtok_rl.guided import Guidance, groups_to_guide, guided_ids, guided_text, luffy_old_logps, score_rows, slot_rows
from samtok_rl.rollouts import append_rollouts, rollout_records
from samtok_rl.runlog import use_compact_logs
from samtok_rl.tokens import MaskTokenIds
from samtok_rl.training_eval import BenchmarkEval, evaluate_policy
from samtok_rl.vllm_rollouts import OnPolicyVLLMGeneration, engine_kwargs_for


logger = logging.getLogger(__name__)

# The per-batch model inputs besides the ids and masks that TRL's generation output may hold, as `_compute_loss` passes
# them to `_get_per_token_logps_and_entropies`.
FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")  # fmt: skip


_torch_load = torch.load


def _load_on_cpu(*args, **kwargs):
    """`torch.load` with every storage restored to the CPU, whatever location the caller asked for."""
    kwargs["map_location"] = "cpu"
    return _torch_load(*args, **kwargs)


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

    def __init__(self, model, *args, rollout_prompts: int = 0, dynamic_sampling: DynamicSampling | None = None,
                 benchmark_eval: BenchmarkEval | None = None, guidance: Guidance | None = None,
                 **kwargs):  # fmt: skip
        self.benchmark_eval = benchmark_eval
        self.guidance = guidance
        self._round_inputs = None  # the rows of the generation round in progress (guided groups read them)
        self._guided_local = None  # which of this process's rows of that round carry the reference answer
        self._code_token_ids = None  # the mask-code token ids (guided/code_logprob), looked up once
        if benchmark_eval is not None and kwargs.get("eval_dataset") is None:
            kwargs["eval_dataset"] = benchmark_eval.rows_dataset()
        self.rollout_prompts = rollout_prompts
        self._rollouts_step = -1
        self.dynamic_sampling = dynamic_sampling
        self._last_rewards_per_func = None
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
        check_launch_took_effect(self.accelerator)
        use_compact_logs(self)
        if benchmark_eval is not None:
            self.add_callback(benchmark_eval.resumed_start)

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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        # With a benchmark split the evaluation is the benchmark's (`samtok_rl.training_eval`): greedy answers scored
        # with the task's metrics. TRL's evaluation (sampled groups, rewards and loss on `eval_dataset`) is kept for
        # recipes without one.
        if self.benchmark_eval is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        bench = self.benchmark_eval
        return evaluate_policy(self, bench.split, bench.mask_tokenizer, bench.text_similarity,
                               bench.resumed_start.active)  # fmt: skip

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        config = self.model.config
        placeholders = {
            self._image_pad_token_id,
            self._video_pad_token_id,
            getattr(config, "vision_start_token_id", None),
            getattr(config, "vision_end_token_id", None),
        }
        placeholders.discard(None)  # fmt: skip
        completion_ids, logprobs, cut = cut_at_placeholders(
            completion_ids, logprobs, placeholders, self.eos_token_ids[0]
        )
        mode = "train" if self.model.training else "eval"
        total = self.accelerator.gather(torch.tensor([cut, len(completion_ids)], device=self.accelerator.device))
        total = total.view(-1, 2).sum(dim=0).tolist()
        self._metrics[mode]["completions/cut_at_vision_token"].append(total[0] / max(total[1], 1))
        if self.guidance is not None and mode == "train":
            completion_ids, logprobs = self._guide_groups(completion_ids, logprobs)
        return completion_ids, logprobs

    def _guide_groups(self, completion_ids, logprobs):
        """Put the reference answer in the last slot of every group with no right answer (`samtok_rl.guided`)."""
        inputs, guidance, generations = self._round_inputs, self.guidance, self.num_generations
        tokenizer = self.processing_class.tokenizer
        n = len(completion_ids)
        offset = self.accelerator.process_index * n  # this process's first row in the gathered batch
        reward = self.reward_funcs[guidance.reward_index]
        prompts = [row["prompt"] for row in inputs]
        sampled_texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        sampled = torch.tensor(score_rows(reward, prompts, sampled_texts, completion_ids, inputs))
        # The reference answer is scored at each group's last slot only (a pixel reward decodes what it scores).
        slots = slot_rows(n, offset, generations)
        texts = [guided_text(inputs[i]) for i in slots]
        ids = [guided_ids(tokenizer, text, self.eos_token_ids[0]) for text in texts]
        reference = torch.full((n,), float("nan"))
        if slots:
            slot_inputs = [inputs[i] for i in slots]
            reference[slots] = torch.tensor(score_rows(reward, [r["prompt"] for r in slot_inputs], texts, ids,
                                                       slot_inputs))  # fmt: skip
        # Groups may straddle processes: every process decides on the gathered scores, so all agree.
        device = self.accelerator.device
        guided = groups_to_guide(self.accelerator.gather(sampled.to(device)).cpu(),
                                 self.accelerator.gather(reference.to(device)).cpu(), generations,
                                 guidance.threshold)  # fmt: skip
        flags = [False] * n
        completion_ids, logprobs = list(completion_ids), None if logprobs is None else list(logprobs)
        for i, token_ids in zip(slots, ids):
            if guided[(offset + i) // generations]:
                flags[i] = True
                completion_ids[i] = token_ids
                if logprobs is not None:
                    # No engine sampled it: its sampling logprobs are missing, which TRL's importance-sampling
                    # correction reads as "no correction" (vLLM reports an unscorable token the same way).
                    logprobs[i] = [None] * len(token_ids)
        self._guided_local = flags
        self._metrics["train"]["guided/fraction"].append(guided.float().mean().item())
        self._log_completion_extra("samtok_guided", flags)
        return completion_ids, logprobs

    def _after_guidance(self, output):
        """Exclude the guided completions from vLLM's importance-sampling correction, give them the chosen loss
        (plain or LUFFY-shaped), and log how foreign they still are to the policy and their advantage."""
        flags = torch.tensor(self._guided_local, dtype=torch.bool, device=self.accelerator.device)
        # Per-row, so it follows each row through TRL's shuffle and split of the batch and dynamic sampling's merge.
        output["guided"] = flags
        if self.accelerator.gather(flags.sum().reshape(1)).sum().item() == 0:
            return output  # every process agrees: no forward pass below, so collective ones stay in step
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        if "importance_sampling_ratio" in output:
            output["importance_sampling_ratio"][flags] = 1.0
        logps = output.get("old_per_token_logps")
        if logps is None:
            # TRL computes the trainer's logprobs of the batch only when it needs them (several iterations, vLLM's
            # correction); the guided completions need them for the log and the shaping: the same forward pass.
            with torch.no_grad():
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1),
                    torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1),
                    output["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size,
                    **{key: output.get(key) for key in FORWARD_KEYS},
                )
        # The mean over every token is dominated by the think template and the tags, which the policy knows; the
        # mask-code tokens are where the reference answer is foreign, so they get their own mean.
        if self._code_token_ids is None:
            self._code_token_ids = torch.tensor(sorted(MaskTokenIds.from_tokenizer(self.processing_class).number))
        codes = torch.isin(output["completion_ids"], self._code_token_ids.to(logps.device)) * mask
        sums = torch.stack([(logps * mask)[flags].sum(), mask[flags].sum(), (logps * codes)[flags].sum(),
                            codes[flags].sum(), output["advantages"][flags].sum(), flags.sum()]).float()  # fmt: skip
        logp_sum, tokens, code_sum, code_tokens, advantage_sum, rows = (
            self.accelerator.gather(sums.reshape(1, -1)).sum(dim=0).tolist()
        )
        self._metrics["train"]["guided/logprob"].append(logp_sum / max(tokens, 1))
        if code_tokens:  # no-target reference answers hold no code
            self._metrics["train"]["guided/code_logprob"].append(code_sum / code_tokens)
        self._metrics["train"]["guided/advantage"].append(advantage_sum / max(rows, 1))
        if self.guidance.shaping == "luffy":
            old = logps.clone()
            old[flags] = luffy_old_logps(logps[flags], self.guidance.gamma)
            output["old_per_token_logps"] = old
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for dynamic sampling: the gathered per-function rewards of the latest round (TRL does not return them).
        self._last_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._last_rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = self._generate_round(inputs)
        if self.dynamic_sampling is None or not self.model.training:
            return output
        return self._dynamic_sampling_rounds(inputs, output)

    def _generate_round(self, inputs):
        """One round of TRL's generation and scoring, with guided groups when they are on."""
        if self.guidance is None or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        self._round_inputs = inputs
        try:
            return self._after_guidance(super()._generate_and_score_completions(inputs))
        finally:  # nothing of this round can leak into the next
            self._round_inputs = self._guided_local = None

    def _local_group_std(self, num_rows: int) -> torch.Tensor:
        """The reward spread of this process's groups in the latest round."""
        std = group_reward_std(self._last_rewards_per_func, self.reward_weights, self.num_generations)
        groups = num_rows // self.num_generations
        return std[self.accelerator.process_index * groups : (self.accelerator.process_index + 1) * groups]

    def _dynamic_sampling_rounds(self, inputs, output):
        """Generate further rounds until every process holds enough informative groups (see `dynamic_sampling`)."""
        settings, generations = self.dynamic_sampling, self.num_generations
        needed = len(inputs) // generations
        outputs = [split_pixel_values_by_grid(output)]
        informative = [(self._local_group_std(len(inputs)) > settings.tolerance).tolist()]
        extra = 0
        while True:
            missing = torch.tensor(float(needed - sum(map(sum, informative))), device=self.accelerator.device)
            if self.accelerator.gather(missing.reshape(1)).max().item() <= 0 or extra >= settings.max_rounds:
                break
            extra += 1
            rows = refill_indices(len(self.train_dataset), needed, settings.seed, self.state.global_step, extra,
                                  self.accelerator.process_index)  # fmt: skip
            refill = [self.train_dataset[i] for i in rows for _ in range(generations)]
            outputs.append(split_pixel_values_by_grid(self._generate_round(refill)))
            informative.append((self._local_group_std(len(refill)) > settings.tolerance).tolist())
        groups, filled = select_groups(informative, needed)
        rows = [(r, g * generations + k) for r, g in groups for k in range(generations)]
        merged = merge_rounds(outputs, rows, self.processing_class.tokenizer.pad_token_id)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        # Every process agrees on what the batch is made of: logged as sums over all of them.
        stats = torch.tensor([sum(map(sum, informative)), sum(map(len, informative)), filled, needed],
                             dtype=torch.float32, device=self.accelerator.device)  # fmt: skip
        kept, generated, filled_all, needed_all = self.accelerator.gather(stats.reshape(1, -1)).sum(dim=0).tolist()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/informative_fraction"].append(kept / generated)
        metrics["dynamic_sampling/extra_rounds"].append(extra)
        metrics["dynamic_sampling/prompts_generated"].append(generated)
        metrics["dynamic_sampling/batch_frac_reward_zero_std"].append(filled_all / needed_all)
        metrics["dynamic_sampling/cap_hit"].append(float(filled_all > 0))
        if filled_all > 0:
            logger.warning(
                "dynamic sampling: %d extra round(s) (the cap) left %d of %d groups without reward spread in the batch "
                "at step %d; raise dynamic_sampling_max_rounds or filter the dataset (`samtok-rl filter`)",
                extra, int(filled_all), int(needed_all), self.state.global_step,
            )  # fmt: skip
        return unsplit_pixel_values_by_grid(merged)

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

    def _load_optimizer_and_scheduler(self, checkpoint):
        # transformers 5.17 loads the optimizer state with `map_location=args.device` when `world_size > 1`; with
        # several CPU processes that is `torch.device("cpu", rank)`, a location torch cannot restore a storage to
        # ("don't know how to restore data location ... (tagged with cpu:0)"). Every CPU rank's state belongs in "cpu".
        if self.args.world_size > 1 and self.args.device.type == "cpu":
            with mock.patch.object(torch, "load", _load_on_cpu):
                return super()._load_optimizer_and_scheduler(checkpoint)
        return super()._load_optimizer_and_scheduler(checkpoint)

    def _stock_checkpoint_loading(self, model) -> bool:
        """Whether transformers' own checkpoint loading is right for `model`: PEFT adapters, FSDP and DeepSpeed
        checkpoints; a plain full model is reloaded through `from_pretrained` instead."""
        return isinstance(model, PeftModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled

    def _load_best_model(self) -> None:
        # transformers restores a full-model best checkpoint with the same plain non-strict `load_state_dict` as a
        # resume (see `_load_from_checkpoint`): no key matches and `load_best_model_at_end` would keep the last
        # weights with a warning. PEFT adapters, FSDP and DeepSpeed keep the stock path.
        if self._stock_checkpoint_loading(self.model):
            return super()._load_best_model()
        logger.info("restoring the best model: %s (%s %s)", self.state.best_model_checkpoint,
                    self.args.metric_for_best_model, self.state.best_metric)  # fmt: skip
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Reload full-model checkpoints through `from_pretrained`.

        `save_pretrained` writes Qwen-VL checkpoints in the original key layout (`visual.*`, `model.layers.*`), but
        transformers 5.17's `Trainer._load_from_checkpoint` loads them with a plain non-strict `load_state_dict`,
        which matches no key: every weight stays at its initial value and the run only warns. `from_pretrained`
        applies the model's key conversion. PEFT adapters, FSDP and DeepSpeed checkpoints keep the stock path.
        """
        model = self.model if model is None else model
        if self._stock_checkpoint_loading(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("loading the model weights of %s with from_pretrained", resume_from_checkpoint)
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
