"""Built-in rewards for SAMTok GRPO, with TRL's reward signature.

Every reward is `f(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`; ground truth comes
from dataset columns (`solution`, `gt_masks`, `image`, `task`), and `__name__` is both the `REWARDS` key and the
metric TRL logs (`rewards/<name>/mean`). Recipes select rewards by name (or by `PRESETS`); `resolve` also accepts
`pkg.module.fn` and `path/to/file.py:fn` for user rewards.

Example:
>>> import rewards
>>> [f.__name__ for f in map(rewards.resolve, rewards.PRESETS["gres"])]
['format_reward', 'gres_mask_reward', 'repetition_think_reward', 'repetition_answer_reward']
>>> rewards.resolve("rewards.gcg.gcg_phrase_reward") is rewards.REWARDS["gcg_phrase_reward"]
True
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from rewards import _text, gres
from rewards._bind import TokenizerBoundReward
from rewards.format import RepetitionReward, format_reward, get_repetition_reward
from rewards.gcg import gcg_grounded_reward, gcg_mask_reward, gcg_phrase_reward
from rewards.gres import gres_mask_reward, gres_mask_reward_hungarian
from rewards.iou import MaskIoUReward, get_mask_iou_reward
from samtok_rl.errors import UsageError


__all__ = [
    "PRESETS",
    "REWARDS",
    "THINK_ANSWER",
    "MaskIoUReward",
    "RepetitionReward",
    "TokenizerBoundReward",
    "bind_tokenizer",
    "clear_caches",
    "format_reward",
    "gcg_grounded_reward",
    "gcg_mask_reward",
    "gcg_phrase_reward",
    "get_mask_iou_reward",
    "get_repetition_reward",
    "get_reward_funcs",
    "gres_mask_reward",
    "gres_mask_reward_hungarian",
    "resolve",
]

# The only registry: name -> reward, keys equal to `__name__`. The rewards that need settings are here with their
# defaults (`mask_iou_reward` without a mask tokenizer raises on first use): `get_reward_funcs` configures them from
# the recipe.
REWARDS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        format_reward,
        gres_mask_reward,
        gres_mask_reward_hungarian,
        get_repetition_reward(part="full"),
        get_repetition_reward(part="think"),
        get_repetition_reward(part="answer"),
        gcg_mask_reward,
        gcg_phrase_reward,
        gcg_grounded_reward,
        get_mask_iou_reward(),
    )
}

# The rewards that read the response's `<think>`/`<answer>` parts: on a prompt without the R1 think/answer
# instruction (`samtok-rl prepare --no_think`) the model answers bare, and these score every answer 0 (the format
# rule fails, a missing answer part scores 0), except `No target.` on no-target rows, which the no-target rule reads
# from the full response. Training them on such prompts teaches "No target." everywhere; `samtok-rl train` refuses.
THINK_ANSWER = frozenset(
    {"format_reward", "gres_mask_reward", "gres_mask_reward_hungarian", "repetition_think_reward",
     "repetition_answer_reward", "mask_iou_reward"}
)  # fmt: skip

# The reference reward sums: GRES 0..4 (format + accuracy + non-repeat on think and on answer), GCG 0..3.
PRESETS: dict[str, list[str]] = {
    "gres": ["format_reward", "gres_mask_reward", "repetition_think_reward", "repetition_answer_reward"],
    "gcg": ["gcg_mask_reward", "gcg_phrase_reward", "repetition_reward"],
}


def resolve(spec: str | Callable) -> Callable:
    """Turn a reward spec into a callable: a `REWARDS` name, a dotted path `pkg.module.fn`, or `path/file.py:fn`.

    A callable is returned as is. A file is imported as module `rewards_plugin_<stem>` (registered in
    `sys.modules`, so its functions pickle within the process).

    Args:
        spec (`str` or `Callable`): the reward to resolve.

    Returns:
        `Callable`: the reward.

    Raises:
        `ValueError`: for an unknown name (the message lists the known ones).

    Example:
    >>> resolve("format_reward").__name__
    'format_reward'
    >>> resolve("no_such_reward")
    Traceback (most recent call last):
    ...
    samtok_rl.errors.UsageError: unknown reward 'no_such_reward'; known: format_reward, gcg_grounded_reward, gcg_mask_reward, gcg_phrase_reward, gres_mask_reward, gres_mask_reward_hungarian, mask_iou_reward, repetition_answer_reward, repetition_reward, repetition_think_reward (or give 'pkg.module.fn' or 'path/to/file.py:fn')
    """
    if callable(spec):
        return spec
    if spec in REWARDS:
        return REWARDS[spec]
    if ".py:" in spec:
        path, _, name = spec.rpartition(":")
        module_name = f"rewards_plugin_{Path(path).stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or not Path(path).is_file():
            raise UsageError(f"reward file not found: {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
        return _callable(spec, getattr(module, name))
    if "." in spec:
        module_name, _, name = spec.rpartition(".")
        return _callable(spec, getattr(importlib.import_module(module_name), name))
    raise UsageError(
        f"unknown reward {spec!r}; known: {', '.join(sorted(REWARDS))} (or give 'pkg.module.fn' or 'path/to/file.py:fn')"
    )


def _callable(spec: str, obj):
    """`obj` if it can score completions; else refuse it now, naming the spec (the column check's
    `inspect.signature` would fail next with `TypeError: 3 is not a callable object`)."""
    if not callable(obj):
        raise UsageError(f"reward {spec!r} is {type(obj).__name__} {obj!r:.60}, not a function")
    return obj


def bind_tokenizer(reward: Callable, tokenizer) -> TokenizerBoundReward:
    """Make `reward` score text rebuilt from TRL's `completion_ids` with `tokenizer` (grounding markers kept).

    TRL decodes completions with `skip_special_tokens=True`, which removes Qwen's `<|object_ref_start|>` and
    `<|object_ref_end|>`; the bound reward decodes the ids itself, keeping those and the mask tokens and dropping EOS
    and padding. Its `__name__` is the reward's. Bind every reward of a run the same way (the entry point does).

    Args:
        reward (`Callable`): any reward with TRL's signature (an already bound one is re-bound).
        tokenizer: the policy's tokenizer or processor, or a folder holding it.

    Returns:
        `TokenizerBoundReward`.
    """
    if isinstance(reward, TokenizerBoundReward):
        reward = reward.reward
    return TokenizerBoundReward(reward, tokenizer)


def get_reward_funcs(specs: list[str], mask_tokenizer=None, repetition_limit: int = 3) -> list[Callable]:
    """Resolve a recipe's reward specs and give the rewards that need them the recipe's settings.

    As open-r1's `get_reward_funcs(script_args)`: `mask_iou_reward` decodes with the recipe's `mask_tokenizer`
    (anything `samtok_rl.mask_tokenizer.build_mask_tokenizer` takes: `micro`, a folder, a Hub id, or a loaded
    tokenizer), and every repetition reward uses `repetition_limit`. Other rewards, user rewards included, are used
    as they resolve.

    Raises:
        `ValueError`: a spec does not resolve, or `mask_iou_reward` is asked for without a mask tokenizer.

    Example:
    >>> [f.__name__ for f in get_reward_funcs(PRESETS["gres"], repetition_limit=5)][2:]
    ['repetition_think_reward', 'repetition_answer_reward']
    >>> get_reward_funcs(["repetition_reward"], repetition_limit=5)[0].limit
    5
    """
    funcs = []
    for spec in specs:
        try:
            func = resolve(spec)
        except UsageError:
            raise  # already names the spec
        except (ValueError, ImportError, AttributeError, FileNotFoundError) as err:
            raise UsageError(f"reward {spec!r} does not resolve: {err}") from err
        if isinstance(func, RepetitionReward):
            func = get_repetition_reward(limit=repetition_limit, part=func.part)
        elif isinstance(func, MaskIoUReward) and not func.configured:
            if mask_tokenizer is None:
                raise UsageError(f"reward {spec!r} decodes masks: set `mask_tokenizer` in the recipe")
            func = get_mask_iou_reward(mask_tokenizer)
        funcs.append(func)
    return funcs


def clear_caches() -> None:
    """Forget every memoised parse of the textual rewards (benchmarks call it between timed runs)."""
    for cache in (*_text.CACHES, gres.target):
        cache.cache_clear()
