"""The mask-token codec: SAMTok's two codes per mask, written as text and as token ids.

A mask with per-level codes ``(c0, c1)`` (each in ``0..255``) is written as four tokens::

    <|mt_start|><|mt_{c0:04d}|><|mt_{256 + c1:04d}|><|mt_end|>

so level-0 tokens are ``mt_0000..mt_0255`` and level-1 tokens ``mt_0256..mt_0511``. This module converts between
codes, text and token ids. It is pure Python (plus torch for the embedding initialisation) and never imports the
trainer, so rewards, data preparation and evaluation can all share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


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

# A span opener followed by any run of code tokens (any digit count, as the reference repair regexes accept).
_SPAN_RE = re.compile(r"<\|mt_start\|>((?:<\|mt_\d+\|>)*)")
_CODE_RE = re.compile(r"<\|mt_(\d+)\|>")
# The strict grammar: exactly two 4-digit codes and nothing in between.
_STRICT_RE = re.compile(r"<\|mt_start\|><\|mt_(\d{4})\|><\|mt_(\d{4})\|><\|mt_end\|>")
_FRAGMENT = "<|mt_"


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


def _codes_from_numbers(numbers: Sequence[int]) -> tuple[int, int] | None:
    """Apply the reference repair conventions to the token numbers of one span.

    3+ codes keep the first two; a lone code gets a missing (-1) second code; a first code outside level 0 drops
    the span; a second code outside level 1 becomes -1 (which the mask tokenizer decodes as that level's row 0).
    """
    if not numbers:
        return None
    c0 = numbers[0]
    if not 0 <= c0 < CODEBOOK_SIZE:
        return None
    if len(numbers) == 1:
        return (c0, -1)
    c1 = numbers[1] - CODEBOOK_SIZE
    return (c0, c1 if 0 <= c1 < CODEBOOK_SIZE else -1)


def parse_masks(text: str, repair: bool = True) -> list[tuple[int, int]]:
    """Read the per-level codes of every mask span in `text`, in order.

    Args:
        text (`str`): any string; non-strings give `[]`.
        repair (`bool`, *optional*, defaults to `True`):
            `False` accepts only well-formed spans (`<|mt_start|>`, a level-0 token, a level-1 token, `<|mt_end|>`,
            nothing in between). `True` follows the reference repair conventions: a span with 3+ codes keeps the
            first two, a span with one code gives `c1 = -1` (missing), a first code outside level 0 drops the span,
            a second code outside level 1 (or not written with 4 digits) gives `c1 = -1`. A span ends at
            `<|mt_end|>` or at the first character that is not a code token. Code tokens outside any span are
            ignored (the reference's position-based pairing would shift every later mask instead).

    Returns:
        `list[tuple[int, int]]`: one `(c0, c1)` per span; never raises.

    Example:
    >>> parse_masks("a <|mt_start|><|mt_0123|><|mt_0301|><|mt_end|> b <|mt_start|><|mt_0007|><|mt_end|>")
    [(123, 45), (7, -1)]
    >>> parse_masks("<|mt_start|><|mt_0007|><|mt_end|>", repair=False)
    []
    """
    if not isinstance(text, str) or _FRAGMENT not in text:
        return []
    out: list[tuple[int, int]] = []
    strict = _STRICT_RE.findall(text)
    # Fast path: when every span opener starts a well-formed span, the strict matches are the whole answer.
    if not repair or text.count(MASK_START) == len(strict):
        for a, b in strict:
            codes = _codes_from_numbers((int(a), int(b)))
            if codes is not None and (repair or codes[1] >= 0):
                out.append(codes)
        return out
    for body in _SPAN_RE.findall(text):
        # Only 4-digit tokens are vocabulary tokens; anything else counts as an out-of-range number.
        numbers = [int(d) if len(d) == 4 else -1 for d in _CODE_RE.findall(body)[:2]]
        codes = _codes_from_numbers(numbers)
        if codes is not None:
            out.append(codes)
    return out


def find_spans(text: str) -> list[str]:
    """Return the well-formed span strings of `text`, in order, duplicates kept (the reward rules' span list).

    Unlike `parse_masks(repair=False)`, the numbers are not range-checked: the textual rewards compare spans as
    strings, exactly as the reference does.
    """
    if not isinstance(text, str) or _FRAGMENT not in text:
        return []
    return [m.group(0) for m in _STRICT_RE.finditer(text)]


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
        tok = _text_tokenizer(tokenizer)
        vocab = tok.get_vocab()
        missing = [t for t in MASK_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"{len(missing)} mask tokens are missing from the tokenizer (first: {missing[0]!r}); "
                "call samtok_rl.tokens.add_mask_tokens first"
            )
        number = {vocab[f"<|mt_{n:04d}|>"]: n for n in range(CODEBOOK_SIZE * NUM_LEVELS)}
        return cls(start=vocab[MASK_START], end=vocab[MASK_END], number=number)


def parse_mask_ids(ids: Sequence[int], mask_ids: MaskTokenIds, repair: bool = True) -> list[tuple[int, int]]:
    """Id-level twin of `parse_masks`: read the spans straight from token ids (e.g. TRL's `completion_ids`).

    Same rules as `parse_masks`; a span ends at the end token or at the first id that is not a code token.

    Args:
        ids (`Sequence[int]`): token ids (a list, tuple or 1-D tensor converted with `.tolist()`).
        mask_ids (`MaskTokenIds`): from `MaskTokenIds.from_tokenizer`.
        repair (`bool`, *optional*, defaults to `True`): see `parse_masks`.

    Returns:
        `list[tuple[int, int]]`: one `(c0, c1)` per span.
    """
    if not isinstance(ids, (list, tuple)):
        ids = ids.tolist()  # tensors and arrays: plain ints hash and compare fast
    start, end, number = mask_ids.start, mask_ids.end, mask_ids.number
    if start not in ids:
        return []
    out: list[tuple[int, int]] = []
    n_ids = len(ids)
    i = 0
    while True:
        try:
            i = ids.index(start, i)
        except ValueError:
            return out
        # Fast path: a well-formed span (both modes accept it as is).
        if i + 3 < n_ids and ids[i + 3] == end:
            a, b = number.get(ids[i + 1], -1), number.get(ids[i + 2], -1)
            if 0 <= a < CODEBOOK_SIZE <= b:
                out.append((a, b - CODEBOOK_SIZE))
                i += 4
                continue
        j = i + 1
        numbers: list[int] = []
        while j < n_ids and ids[j] in number:
            numbers.append(number[ids[j]])
            j += 1
        closed = j < n_ids and ids[j] == end
        if repair:
            codes = _codes_from_numbers(numbers[:2])
            if codes is not None:
                out.append(codes)
        elif closed and len(numbers) == 2 and numbers[0] < CODEBOOK_SIZE <= numbers[1]:
            out.append((numbers[0], numbers[1] - CODEBOOK_SIZE))
        i = j


def _text_tokenizer(tokenizer_or_processor):
    # A processor wraps its text tokenizer; a tokenizer is used as is.
    from transformers import ProcessorMixin

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
    from tokenizers import AddedToken

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
    import torch

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
