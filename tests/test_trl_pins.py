"""The TRL and transformers code samtok-rl overrides is the code it was written against.

`samtok_rl.vllm_rollouts` and `samtok_rl.trainer` replace a few methods of TRL's `VLLMGeneration` and `GRPOTrainer`
(and transformers' checkpoint loading). When an upgrade changes any of them, these tests fail: read the new upstream
code, port or drop the override (TRL's open pull request #6718 fixes the doubled image placeholders; once released,
the collapse in `OnPolicyVLLMGeneration.generate` must go), then record the new hashes here.
"""

from __future__ import annotations

import hashlib
import inspect

import pytest
import transformers
import trl
from transformers import Trainer
from transformers.integrations.integration_utils import rewrite_logs
from transformers.trainer_callback import DefaultFlowCallback
from trl import GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration
from trl.trainer.utils import RepeatSampler, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from samtok_rl.vllm_rollouts import TRL_VERSION


# sha256 of `inspect.getsource(...)`, first 16 hex digits, in trl 1.16.0 / transformers 5.17.0.
PINNED = {
    VLLMGeneration._init_vllm: "0e584002e0f6a9c0",
    VLLMGeneration.generate: "2d2ac2be5b1309c4",
    VLLMGeneration._place_features: "5150ee5f57eb83d0",
    VLLMGeneration._iter_named_params: "baab615d5c7bc3e1",
    VLLMGeneration._iter_fsdp2_params: "6d41acd02236f368",  # walks `module.named_parameters()`, which the sync narrows
    VLLMGeneration.sync_weights: "63d669fb32304ff5",
    GRPOTrainer.__init__: "18f01b7a46c9544b",  # builds `VLLMGeneration(...)` by its module-level name
    GRPOTrainer._get_train_sampler: "36497afb4d311dc9",
    GRPOTrainer.log: "1e7772819cc8cf09",  # fills `_logs`, which the rollout records read, and leaves it in place
    RepeatSampler.__init__: "7898b11a3b9e9e07",  # EpochRepeatSampler replays its generator
    RepeatSampler.__iter__: "d80412d80424bd64",
    Trainer._load_from_checkpoint: "4711d0506786db15",
    # Loads the optimizer state with map_location=args.device for world_size > 1 (`cpu:<rank>` on CPU processes).
    Trainer._load_optimizer_and_scheduler: "bdcb956f06c459ab",
    # Dynamic sampling: the gathered rewards it reads, the output dict it merges (keys, padding sides), the buffering
    # that splits the merged batch, and the per-sample pixel split it relies on.
    GRPOTrainer._generate_single_turn: "e0f02e4fc094cefd",  # returns the completion ids the vision-token cut edits
    GRPOTrainer._calculate_rewards: "736ae29b083840b5",
    GRPOTrainer._generate_and_score_completions: "1fa48922792dcd5c",
    GRPOTrainer._prepare_inputs: "f824e7fb07147956",
    split_pixel_values_by_grid: "3aca66e33a7978d3",
    unsplit_pixel_values_by_grid: "9d31b407fc5f4399",
    # Benchmark evaluation during training: `evaluate` is replaced when a benchmark split is set (it logs the metrics
    # and calls `on_evaluate`, as this does); `_evaluate` and `_determine_best_metric` read the returned `eval_` keys;
    # the flow callback adds the last step's evaluation; `rewrite_logs` is how trackers name `eval_` keys `eval/`.
    Trainer.evaluate: "47001f3acc991bc4",
    Trainer._evaluate: "d8237204ce5fd577",
    Trainer._determine_best_metric: "7aa77355a0c33b67",
    Trainer._load_best_model: "0e183d55a9db7414",  # the same plain load_state_dict as `_load_from_checkpoint`
    DefaultFlowCallback.on_step_end: "33eb820c7cd1a18c",
    rewrite_logs: "c0d6c5a08ddd6d6d",
    # Guided groups: the loss whose clipped ratio pi / pi_old carries LUFFY's shaping and whose importance-sampling
    # multiplier is set to 1 for the reference answers; the forward pass they reuse; the per-completion log column.
    GRPOTrainer._compute_loss: "80295546bbdbf6f7",
    GRPOTrainer._get_per_token_logps_and_entropies: "ea73c3909275851d",
    GRPOTrainer._log_completion_extra: "afe43ddaa96cfd5c",
}


def test_trl_is_the_pinned_release():
    assert trl.__version__ == TRL_VERSION
    assert transformers.__version__.startswith("5.17.")


@pytest.mark.parametrize("method", list(PINNED), ids=lambda m: m.__qualname__)
def test_overridden_upstream_method_is_unchanged(method):
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
    assert digest == PINNED[method], f"{method.__qualname__} changed upstream: revisit its override, then re-pin"


def test_the_hooks_the_overrides_rely_on_are_there():
    # The trainer swaps the name TRL's __init__ calls; the generation class binds extra arguments to `LLM(`.
    assert "VLLMGeneration(" in inspect.getsource(GRPOTrainer.__init__)
    # The sync walk is narrowed through the model's parameter listing, and PEFT merges into the base weights in place.
    walk = inspect.getsource(VLLMGeneration._iter_named_params)
    assert "model.named_parameters()" in walk and "list(model.parameters())" in walk and "merge_adapter()" in walk
    assert "torch.load(" in inspect.getsource(Trainer._load_optimizer_and_scheduler)
    assert "self.llm = LLM(" in inspect.getsource(VLLMGeneration._init_vllm)
    # TRL 1.16 still feeds vLLM the processor-expanded ids (huggingface/trl#6294): the collapse is still needed.
    assert '"prompt_token_ids": ids' in inspect.getsource(VLLMGeneration.generate)
    # Dynamic sampling reads the gathered rewards `_calculate_rewards` returns and merges these output keys.
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards_per_func = self._calculate_rewards(" in source and '"advantages": advantages' in source
    # Guided groups: a missing vLLM logprob (NaN) gives a zero difference, so an importance-sampling ratio of 1, and
    # the clipped objective is -min(r A, clip(r) A).
    assert "per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)" in source
    loss = inspect.getsource(GRPOTrainer._compute_loss)
    assert "per_token_loss = -torch.min(per_token_loss1, per_token_loss2)" in loss
    assert 'per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]' in loss
