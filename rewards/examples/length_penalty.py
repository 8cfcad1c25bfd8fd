"""An example user reward: select it in a recipe with `reward_funcs: [..., rewards/examples/length_penalty.py:length_penalty_reward]`."""


def length_penalty_reward(prompts, completions, completion_ids=None, max_tokens=512, **kwargs) -> list[float]:
    """-1.0 for a completion that used all `max_tokens` (likely truncated), else 0.0.

    Example:
    >>> length_penalty_reward(None, ["a", "b"], completion_ids=[[1] * 512, [1] * 10])
    [-1.0, 0.0]
    """
    return [-1.0 if len(ids) >= max_tokens else 0.0 for ids in completion_ids]
