"""Re-decode TRL's `completion_ids` so rewards see the grounding markers that `skip_special_tokens=True` drops."""

from __future__ import annotations

import operator
from pathlib import Path

from transformers import AutoTokenizer, ProcessorMixin
from trl.trainer.utils import get_callable_name

from samtok_rl.errors import UsageError
from samtok_rl.parsing import OBJ_REF_END, OBJ_REF_START


# Special tokens that carry grounding and must survive decoding; every other special token (EOS, padding, chat and
# vision markers) is dropped, as TRL's own decoding drops it.
KEEP_SPECIAL = (OBJ_REF_START, OBJ_REF_END, "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>")


# The largest reward magnitude accepted from any reward function. samtok-rl's own rewards lie in [0, 3]; a value beyond
# this bound is a bug (an overflow, a missing normalisation) that would swamp the weighted sum of the rewards.
MAX_ABS_REWARD = 1e3

# The last decoded batch: [completion_ids, its items, tokenizer, texts] (see `TokenizerBoundReward.decode`).
_last_decode: list = [None, (), None, None]


class IdDecoder:
    """Decode token ids keeping the grounding markers and the (non-special) mask tokens, dropping other specials.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the policy's text tokenizer.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        keep = set(tokenizer.convert_tokens_to_ids([t for t in KEEP_SPECIAL if t in tokenizer.get_vocab()]))
        special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        special.update(tokenizer.all_special_ids)  # eos/pad even when they are not added tokens
        self.drop = frozenset(special - keep)

    def __call__(self, batch_ids) -> list[str]:
        drop = self.drop
        kept = [[i for i in (ids if isinstance(ids, list) else ids.tolist()) if i not in drop] for ids in batch_ids]
        return self.tokenizer.batch_decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _log_rollout_columns(log_extra, texts: list[str], kwargs: dict) -> None:
    """Hand TRL the per-completion columns of `samtok_rl.rollouts` (once per step: the text the rewards score and the
    row's image path, task, reference answer and GT masks)."""
    n = len(texts)
    images = kwargs.get("image") or [None] * n
    columns = {
        "samtok_text": texts,
        # A file's PIL image carries its path; samtok_rl.loading keeps it on the images it converts to RGB.
        "samtok_image": [getattr(image, "filename", None) for image in images],
        "samtok_task": kwargs.get("task") or [None] * n,
        "samtok_solution": kwargs.get("solution") or [None] * n,
        "samtok_gt_masks": kwargs.get("gt_masks") or [None] * n,
    }
    for column, values in columns.items():
        log_extra(column, list(values))


class TokenizerBoundReward:
    """A reward that scores text rebuilt from `completion_ids` with a bound tokenizer (see `rewards.bind_tokenizer`).

    When TRL passes `completion_ids`, they are decoded (grounding and mask tokens kept, EOS and padding dropped)
    and handed to the wrapped reward as `completions` (conversational completions stay conversational); without
    ids the reward scores the text it is given. Picklable: the decoder is rebuilt lazily after unpickling.

    Args:
        reward (`Callable`): any reward with TRL's signature.
        tokenizer (`PreTrainedTokenizerBase`, `ProcessorMixin`, `str` or `Path`):
            the policy's tokenizer, its processor, or a folder to load it from (lazily, with `AutoTokenizer`).
    """

    def __init__(self, reward, tokenizer) -> None:
        self.reward = reward
        self.__name__ = get_callable_name(reward)
        # Keep the text tokenizer only: it pickles, and processors carry image processors the rewards never use.
        self.tokenizer = tokenizer.tokenizer if isinstance(tokenizer, ProcessorMixin) else tokenizer
        self._decoder: IdDecoder | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_decoder": None}

    def decode(self, completion_ids) -> list[str]:
        """Decode a batch of completion ids (lists of ints or 1-D tensors) to reward text."""
        # TRL hands the same `completion_ids` list to every reward of a step: decode it once for all the rewards
        # bound to this tokenizer (~0.4 s per reward for 4096 x 256 tokens). The memo keeps the list and its items
        # alive, so their ids cannot be reused by other objects while it holds them.
        batch, items, tokenizer, texts = _last_decode
        if (
            batch is completion_ids
            and tokenizer is self.tokenizer
            and len(items) == len(completion_ids)
            and all(map(operator.is_, items, completion_ids))
        ):
            return list(texts)  # a copy: a reward may edit its completions in place
        if self._decoder is None:
            tokenizer = self.tokenizer
            if isinstance(tokenizer, (str, Path)):
                tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            self._decoder = IdDecoder(tokenizer)
        texts = self._decoder(completion_ids)
        _last_decode[:] = [completion_ids, list(completion_ids), self.tokenizer, texts]
        return list(texts)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        if completion_ids is not None:
            fresh = _last_decode[0] is not completion_ids  # the first bound reward of this step decodes
            texts = self.decode(completion_ids)
            if fresh and kwargs.get("log_extra") is not None:
                _log_rollout_columns(kwargs["log_extra"], texts, kwargs)
            if completions is not None and completions and isinstance(completions[0], list):
                completions = [[{"role": "assistant", "content": text}] for text in texts]
            else:
                completions = texts
        scores = self.reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        n = len(completions) if completions is not None else len(completion_ids)
        if not isinstance(scores, (list, tuple)) or len(scores) != n:
            raise UsageError(
                f"reward {self.__name__} returned {scores!r:.80} for {n} completions: it must return a list of {n} floats (or None)"
            )
        for i, score in enumerate(scores):
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                raise UsageError(
                    f"reward {self.__name__} returned {score!r:.40} ({type(score).__name__}) for completion {i}: rewards return floats (or None)"
                )
            # TRL sums rewards skipping NaN, so a NaN reward silently counts for nothing; inf or a huge value swamps
            # the total and the group normalisation (loss and gradient 0, or `reward 5e+29 ± inf`). `None` is the way
            # to say "not applicable" (e.g. a row of another task).
            if score is not None and not -MAX_ABS_REWARD <= score <= MAX_ABS_REWARD:
                raise UsageError(
                    f"reward {self.__name__} returned {score!r} for completion {i}: rewards must be finite and within "
                    f"±{MAX_ABS_REWARD:g} (return None where the reward does not apply)"
                )
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__name__})"
