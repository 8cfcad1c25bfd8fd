"""The mask-token codec: formatting, parsing (strict and repair), id-level parsing, vocabulary."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtok_rl.parsing import find_span_codes, parse_mask_ids, parse_masks, split_think_answer
from samtok_rl.tokens import MASK_END, MASK_START, MASK_TOKENS, MaskTokenIds, format_mask, format_masks


codes = st.integers(min_value=0, max_value=255)


def test_vocabulary_order_and_size():
    assert len(MASK_TOKENS) == 514
    assert MASK_TOKENS[0] == MASK_START and MASK_TOKENS[-1] == MASK_END
    assert MASK_TOKENS[1] == "<|mt_0000|>" and MASK_TOKENS[512] == "<|mt_0511|>"
    assert len(set(MASK_TOKENS)) == 514


def test_format_mask_example_and_offsets():
    assert format_mask(123, 45) == "<|mt_start|><|mt_0123|><|mt_0301|><|mt_end|>"
    assert format_mask(np.int64(0), np.int32(255)) == "<|mt_start|><|mt_0000|><|mt_0511|><|mt_end|>"
    assert format_masks([(1, 2), (3, 4)]) == [format_mask(1, 2), format_mask(3, 4)]


@pytest.mark.parametrize("bad", [-1, 256, 1000, 3.0, "7", True, None])
def test_format_mask_rejects_out_of_range_naming_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        format_mask(bad, 0)
    with pytest.raises(ValueError, match="level 1"):
        format_mask(0, bad)


@given(codes, codes)
@settings(max_examples=2000, deadline=None)
def test_roundtrip_all_codes(a, b):
    span = format_mask(a, b)
    assert parse_masks(span) == [(a, b)]
    assert parse_masks(span, repair=False) == [(a, b)]
    assert find_span_codes(f"x {span} y") == [(f"{a:04d}", f"{256 + b:04d}")]


def test_roundtrip_exhaustive_level_pairs():
    # Every code of each level at least once, in one text.
    text = " ".join(format_mask(i, 255 - i) for i in range(256))
    assert parse_masks(text) == [(i, 255 - i) for i in range(256)]
    assert parse_masks(text, repair=False) == [(i, 255 - i) for i in range(256)]


# --- the repair conventions, one test each -------------------------------------------------------------------------
S, E = MASK_START, MASK_END


def test_repair_three_or_more_codes_keep_first_two():
    text = f"{S}<|mt_0010|><|mt_0300|><|mt_0301|><|mt_0302|>{E}"
    assert parse_masks(text) == [(10, 44)]
    assert parse_masks(text, repair=False) == []


def test_repair_one_code_gives_missing_second():
    assert parse_masks(f"{S}<|mt_0010|>{E}") == [(10, -1)]
    assert parse_masks(f"{S}<|mt_0010|> and more") == [(10, -1)]  # no end token either
    assert parse_masks(f"{S}<|mt_0010|>{E}", repair=False) == []


def test_repair_first_code_outside_level0_drops_span():
    assert parse_masks(f"{S}<|mt_0300|><|mt_0301|>{E}") == []
    assert parse_masks(f"{S}<|mt_0300|><|mt_0301|>{E}{S}<|mt_0001|><|mt_0257|>{E}") == [(1, 1)]


def test_repair_second_code_outside_level1_is_missing():
    assert parse_masks(f"{S}<|mt_0010|><|mt_0011|>{E}") == [(10, -1)]
    assert parse_masks(f"{S}<|mt_0010|><|mt_9999|>{E}") == [(10, -1)]  # the reference placeholder
    assert parse_masks(f"{S}<|mt_0010|><|mt_0011|>{E}", repair=False) == []


def test_repair_non_four_digit_tokens_are_out_of_range():
    assert parse_masks(f"{S}<|mt_10|><|mt_0300|>{E}") == []
    assert parse_masks(f"{S}<|mt_0010|><|mt_300|>{E}") == [(10, -1)]


def test_missing_end_token_still_reads_two_codes():
    assert parse_masks(f"{S}<|mt_0010|><|mt_0300|> trailing") == [(10, 44)]
    assert parse_masks(f"{S}<|mt_0010|><|mt_0300|> trailing", repair=False) == []


def test_whitespace_inside_a_span_breaks_it():
    assert parse_masks(f"{S} <|mt_0010|><|mt_0300|>{E}") == []
    assert parse_masks(f"{S}<|mt_0010|> <|mt_0300|>{E}") == [(10, -1)]


def test_stray_codes_outside_spans_are_ignored():
    text = f"<|mt_0005|> {S}<|mt_0010|><|mt_0300|>{E} <|mt_0301|>"
    assert parse_masks(text) == [(10, 44)]


def test_non_strings_give_empty():
    assert parse_masks(None) == [] and parse_masks(b"<|mt_start|>") == [] and find_span_codes(3) == []


fragments = st.sampled_from(
    [S, E, "<|mt_", "|>", "<|mt_0012|>", "<|mt_0300|>", "<|mt_9999|>", "<|mt_12|>", "<|mt_00012|>", "<think>",
     "</answer>", "<|object_ref_start|>", " ", "\n", "é", "\x00", "{", "mt", "0", "<|", "|"]
)
noisy = st.lists(st.one_of(fragments, st.text(max_size=5)), max_size=30).map("".join)


@given(noisy)
@settings(max_examples=3000, deadline=None)
def test_parse_never_raises_and_stays_in_range(text):
    for repair in (True, False):
        for c0, c1 in parse_masks(text, repair=repair):
            assert 0 <= c0 < 256 and (-1 <= c1 < 256)
            if not repair:
                assert c1 >= 0
    strict = parse_masks(text, repair=False)
    # Every strict span is also read by repair mode, in the same order.
    repaired = parse_masks(text)
    it = iter(repaired)
    assert all(any(x == y for y in it) for x in strict)


# --- id-level twin ------------------------------------------------------------------------------------------------
class _VocabTokenizer:
    """The smallest tokenizer surface MaskTokenIds needs: a vocabulary (ids deliberately not contiguous)."""

    def __init__(self):
        self.vocab = {t: 1000 + 3 * i for i, t in enumerate(MASK_TOKENS)}
        self.vocab.update({" ": 1, "a": 2, "<|im_end|>": 3})
        self.inv = {v: k for k, v in self.vocab.items()}

    def get_vocab(self):
        return dict(self.vocab)

    def encode(self, text):
        # Greedy longest match over the vocabulary, enough for the strings generated below.
        out, i = [], 0
        keys = sorted(self.vocab, key=len, reverse=True)
        while i < len(text):
            for k in keys:
                if text.startswith(k, i):
                    out.append(self.vocab[k])
                    i += len(k)
                    break
            else:
                raise ValueError(text[i:])
        return out


tok = _VocabTokenizer()
mask_ids = MaskTokenIds.from_tokenizer(tok)
id_pieces = st.lists(
    st.one_of(st.sampled_from([S, E, " ", "a", "<|im_end|>"]), codes.map(lambda c: f"<|mt_{c:04d}|>"),
              codes.map(lambda c: f"<|mt_{c + 256:04d}|>")),
    max_size=25,
).map("".join)


@given(id_pieces)
@settings(max_examples=2000, deadline=None)
def test_ids_parse_equals_text_parse(text):
    ids = tok.encode(text)
    for repair in (True, False):
        assert parse_mask_ids(ids, mask_ids, repair=repair) == parse_masks(text, repair=repair)


def test_ids_accept_tuples_and_arrays():
    text = f"a{format_mask(7, 9)}a{S}<|mt_0001|>{E}"
    ids = tok.encode(text)
    expected = [(7, 9), (1, -1)]
    assert parse_mask_ids(ids, mask_ids) == expected
    assert parse_mask_ids(tuple(ids), mask_ids) == expected
    assert parse_mask_ids(np.array(ids), mask_ids) == expected
    assert parse_mask_ids([], mask_ids) == []


def test_mask_token_ids_missing_tokens_is_a_clear_error():
    class Partial(_VocabTokenizer):
        def get_vocab(self):
            return {"a": 1}

    with pytest.raises(ValueError, match="514 mask tokens are missing.*add_mask_tokens"):
        MaskTokenIds.from_tokenizer(Partial())


def test_mask_token_ids_pickles():
    assert pickle.loads(pickle.dumps(mask_ids)) == mask_ids


# --- add_mask_tokens on a real tokenizer and model ------------------------------------------------------------------
def _fresh_base(seed=0):
    """A tiny tokenizer without mask tokens and a text model whose vocabulary is padded beyond it (like real Qwen)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from samtok_rl.tiny import build_tiny_processor

    processor = build_tiny_processor("qwen2_5_vl")
    tok = processor.tokenizer
    assert MASK_START not in tok.get_vocab()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok) + 7, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    return processor, Qwen2ForCausalLM(config)


def test_add_mask_tokens_non_special_ordered_and_initialised():
    import torch

    from samtok_rl.tokens import add_mask_tokens

    processor, model = _fresh_base()
    tok = processor.tokenizer
    n_base, rows_before = len(tok), model.get_input_embeddings().weight.shape[0]
    old = model.get_input_embeddings().weight[:n_base].detach().clone()
    ids = add_mask_tokens(processor, model, seed=3)
    assert ids == list(range(n_base, n_base + 514))  # appended in vocabulary order
    assert all(not t.special for t in tok.added_tokens_decoder.values() if t.content in MASK_TOKENS)
    # Resized to the tokenizer (the padded rows beyond the base vocabulary are reused, never shrunk).
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == max(rows_before, len(tok)) == n_base + 514
    assert torch.equal(weight[:n_base], old)  # base rows untouched
    new = weight[n_base:].detach()
    mean, std = old.mean(0), old.std(0).clamp(min=1e-3)
    assert torch.allclose(new.mean(0), mean, atol=float(4 * 0.02 * std.max() / 514**0.5 * 3))
    assert (new - mean).abs().max() < 0.02 * std.max() * 6
    # The untied output head got its own rows too.
    assert not torch.equal(model.get_output_embeddings().weight[n_base:], torch.zeros_like(new))
    # Seeded: the same seed gives the same rows.
    processor2, model2 = _fresh_base()
    add_mask_tokens(processor2, model2, seed=3)
    assert torch.equal(model2.get_input_embeddings().weight[n_base:], new)
    # Survives skip_special_tokens decoding (TRL decodes completions that way).
    text = "x" + format_mask(5, 6)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == text


def test_add_mask_tokens_idempotent_and_partial():
    from samtok_rl.tokens import add_mask_tokens

    processor, model = _fresh_base()
    tok = processor.tokenizer
    # A tokenizer that already has some of the tokens: only the missing ones are added, order preserved.
    tok.add_tokens(list(MASK_TOKENS[:10]))
    ids = add_mask_tokens(processor, model)
    assert len(set(ids)) == 514 and ids[10:] == sorted(ids[10:])
    n = len(tok)
    rows = model.get_input_embeddings().weight.detach().clone()
    assert add_mask_tokens(processor, model) == ids  # second call: nothing changes
    assert len(tok) == n
    import torch

    assert torch.equal(model.get_input_embeddings().weight, rows)


# --- the think/answer split is the reference regex rule, implemented with str.find --------------------------------
tagged = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "a", "\n", " ", "<", ">"]),
                  max_size=14).map("".join)


@given(tagged)
@settings(max_examples=3000, deadline=None)
def test_split_think_answer_matches_reference_regexes(text):
    import re


    m_think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    m_answer = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    think = m_think.group(1) if m_think else None
    answer = m_answer.group(1) if m_answer else None
    if think is None or answer is None:
        for sep in ("<answer>", "</think>"):
            if sep in text:
                head, tail = text.split(sep, 1)
                think = head if think is None else think
                answer = tail if answer is None else answer
                break
    assert split_think_answer(text) == (think, answer)
