"""Completions that sampled a vision placeholder token are cut there, so the training forward pass stays valid.

A policy can sample `<|image_pad|>` (or another vision placeholder) like any other token: random weights do it often,
trained ones rarely, and vLLM rollouts of Qwen-VL models are known to (StarsfieldAI/R1-V#91, hiyouga/EasyR1#110).
The trainer's forward pass then counts one more image token than the image has features and stops with
"Image features and image tokens do not match". `SamtokGRPOTrainer` cuts each completion before its first placeholder
(its sampled log-probabilities too), so every kept token is one the policy sampled, and logs the share of completions
cut as `completions/cut_at_vision_token`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


__all__ = ["cut_at_placeholders"]


def cut_at_placeholders(
    completion_ids: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence] | None,
    placeholders: Collection[int],
    end_id: int,
) -> tuple[list[list[int]], list | None, int]:
    """Cut each completion before its first token in `placeholders`.

    A completion whose very first token is a placeholder becomes `[end_id]` (an empty completion is not valid for
    TRL) with the log-probability `None`: that token was not sampled, and TRL leaves a `None` (NaN) position out of the
    importance-sampling correction and of the logged vLLM-trainer gap.

    Returns:
        The cut ids, the cut log-probabilities (None stays None) and how many completions were cut.

    Example:
    >>> cut_at_placeholders([[5, 6, 9, 7], [9, 1], [1, 2]], [[.1, .2, .3, .4], [.5, .6], [.7, .8]], {9}, end_id=0)
    ([[5, 6], [0], [1, 2]], [[0.1, 0.2], [None], [0.7, 0.8]], 2)
    """
    out_ids, out_logprobs, cut = [], [] if logprobs is not None else None, 0
    for k, ids in enumerate(completion_ids):
        ids = list(ids)
        stop = next((i for i, token in enumerate(ids) if token in placeholders), None)
        if stop is not None:
            cut += 1
            ids = ids[:stop] if stop > 0 else [end_id]
        out_ids.append(ids)
        if logprobs is not None:
            if stop is None:
                out_logprobs.append(logprobs[k])
            else:
                out_logprobs.append(list(logprobs[k])[:stop] if stop > 0 else [None])
    return out_ids, out_logprobs, cut
