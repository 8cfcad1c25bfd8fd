"""The mask-token codec: SAMTok's two codes per mask, written as text and as token ids.

A mask with per-level codes ``(c0, c1)`` (each in ``0..255``) is written as four tokens::

    <|mt_start|><|mt_{c0:04d}|><|mt_{256 + c1:04d}|><|mt_end|>

so level-0 tokens are ``mt_0000..mt_0255`` and level-1 tokens ``mt_0256..mt_0511``. This module writes codes as text,
looks the tokens up in a tokenizer and adds them to one; reading them back out of model output is
`samtok_rl.parsing`'s job. It never imports the trainer, so rewards, data preparation and evaluation all share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from tokenizers import AddedToken
from transformers import ProcessorMixin


MASK_START = "<|mt_start|>"
MASK_END = "<|mt_end|>"
CODEBOOK_SIZE = 256
NUM_LEVELS = 2

# SAMTok's vocabulary order (utils/add_special_tokens.py): start, the 512 code tokens, end.
MASK_TOKENS: tuple[str, ...] = (
    MASK_START,
    *(f"<|mt_{n:04d}|>" for n in range(CODEBOOK_SIZE * NUM_LEVELS)),
    MASK_END,
)



def format_mask(c0: int, c1: int) -> str:
    """Write one mask's per-level codes as its four-token span.

    Args:
        c0 (`int`): level-0 code, in `0..255`.
        c1 (`int`): level-1 code, in `0..255` (the token number is offset by 256).

    Returns:
        `str`: the span text.

    Example:
    >>> format_mask(123, 45)
    '<|mt_start|><|mt_0123|><|mt_0301|><|mt_end|>'
    """
    for level, code in enumerate((c0, c1)):
        # bool is an int subclass; numpy integers are accepted through operator.index.
        if isinstance(code, bool) or not 0 <= _as_int(code, level) < CODEBOOK_SIZE:
            raise ValueError(f"mask code for level {level} must be an integer in 0..{CODEBOOK_SIZE - 1}, got {code!r}")
    return f"{MASK_START}<|mt_{int(c0):04d}|><|mt_{CODEBOOK_SIZE + int(c1):04d}|>{MASK_END}"


def _as_int(code, level: int) -> int:
    try:
        return code.__index__()
    except AttributeError:
        raise ValueError(f"mask code for level {level} must be an integer, got {code!r}") from None


def format_masks(codes: Iterable[Sequence[int]]) -> list[str]:
    """Write each `(c0, c1)` row of `codes` as a span (see `format_mask`)."""
    return [format_mask(row[0], row[1]) for row in codes]


def missing_mask_tokens(tokenizer) -> list[str]:
    """The mask tokens `tokenizer` (a tokenizer or a processor) lacks, in vocabulary order."""
    vocab = _text_tokenizer(tokenizer).get_vocab()
    return [t for t in MASK_TOKENS if t not in vocab]


@dataclass(frozen=True)
class MaskTokenIds:
    """The token ids of the 514 mask tokens in one tokenizer (looked up by string, never by arithmetic).

    Attributes:
        start (`int`): id of `<|mt_start|>`.
        end (`int`): id of `<|mt_end|>`.
        number (`dict[int, int]`): code-token id -> token number `n` in `0..511`.
    """

    start: int
    end: int
    number: dict[int, int]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> MaskTokenIds:
        """Look the mask tokens up in `tokenizer` (a tokenizer or a processor); raises if any is missing."""
        missing = missing_mask_tokens(tokenizer)
        if missing:
            raise ValueError(
                f"{len(missing)} mask tokens are missing from the tokenizer (first: {missing[0]!r}); "
                "call samtok_rl.tokens.add_mask_tokens first"
            )
        vocab = _text_tokenizer(tokenizer).get_vocab()
        number = {vocab[f"<|mt_{n:04d}|>"]: n for n in range(CODEBOOK_SIZE * NUM_LEVELS)}
        return cls(start=vocab[MASK_START], end=vocab[MASK_END], number=number)


def _text_tokenizer(tokenizer_or_processor):
    # A processor wraps its text tokenizer; a tokenizer is used as is.

    if isinstance(tokenizer_or_processor, ProcessorMixin):
        return tokenizer_or_processor.tokenizer
    return tokenizer_or_processor


def add_mask_tokens(tokenizer_or_processor, model=None, seed: int = 0) -> list[int]:
    """Add the 514 mask tokens to a tokenizer (and the model's embeddings), as the SAMTok recipe does.

    The tokens are added as NON-special `AddedToken`s (`normalized=False`): TRL decodes completions with
    `skip_special_tokens=True`, and special mask tokens would reach the rewards as empty strings. Idempotent: tokens
    already present are kept, missing ones are appended in vocabulary order.

    When `model` is given, its embeddings are resized to the tokenizer's length (never shrunk) and each new mask
    token row is initialised to the per-dimension mean of the existing rows plus `0.02 * N(0, 1) * std` (std clamped
    to at least 1e-3), seeded; the output embedding gets the same treatment when it is not tied.

    Args:
        tokenizer_or_processor: a tokenizer, or a processor whose `.tokenizer` is used.
        model (`PreTrainedModel`, *optional*): the model whose embeddings to resize.
        seed (`int`, *optional*, defaults to `0`): seed of the row initialisation.

    Returns:
        `list[int]`: the ids of the 514 tokens, in `MASK_TOKENS` order.
    """
    tok = _text_tokenizer(tokenizer_or_processor)
    vocab = tok.get_vocab()
    missing = [t for t in MASK_TOKENS if t not in vocab]
    if missing:
        tok.add_tokens(
            [AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False, single_word=False)
             for t in missing],
            special_tokens=False,
        )
    ids = tok.convert_tokens_to_ids(list(MASK_TOKENS))
    if model is not None:
        new_ids = tok.convert_tokens_to_ids(missing) if missing else []
        _resize_and_init(model, len(tok), new_ids, seed)
    return ids


def _resize_and_init(model, n_tokens: int, new_ids: list[int], seed: int) -> None:
    emb = model.get_input_embeddings()
    if n_tokens > emb.weight.shape[0]:
        # mean_resizing=False: we initialise the rows ourselves with SAMTok's rule below.
        model.resize_token_embeddings(n_tokens, mean_resizing=False)
    if not new_ids:
        return
    # Statistics over the rows that existed before the mask tokens (the base vocabulary).
    n_base = min(new_ids)
    generator = torch.Generator().manual_seed(seed)
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
        tables.append(out.weight)
    index = torch.tensor(new_ids, dtype=torch.long)
    with torch.no_grad():
        for weight in tables:
            base = weight[:n_base].float()
            mean, std = base.mean(dim=0), base.std(dim=0).clamp(min=1e-3)
            noise = torch.randn((len(new_ids), weight.shape[1]), generator=generator)
            rows = mean + 0.02 * noise * std
            weight[index.to(weight.device)] = rows.to(weight.dtype).to(weight.device)
