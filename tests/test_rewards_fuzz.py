"""Fuzz: no reward raises on any completion text, and every score stays in its range."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import REWARDS, bind_tokenizer
from rewards.format import _FORMAT_RE, is_formatted
from samtok_rl.tokens import format_mask


A, A1, B = format_mask(123, 45), format_mask(123, 46), format_mask(7, 144)
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<|mt_start|>", "<|mt_end|>", "<|mt_0123|>", "<|mt_0301|>",
    "<|mt_0400|>", "<|mt_123|>", "<|mt_99999|>", "<|mt_", "|>", "<|", A, A1, B, "No target.", REF_START, REF_END,
    " ", "\n", "white pumpkin", "```json", '"mask_2d": "', "<|im_end|>",
]  # fmt: skip
NOISE = "ab <>|_/\n\t0123456789tmü日🙂\u200b\x00\ufeff."


def _text(data: bytes) -> str:
    # One binary draw per example is much cheaper for hypothesis than a list of sub-strategies (10k examples in a
    # few seconds): each byte picks a fragment (tags, mask tokens, spans, markers) or a noise character.
    n = len(FRAGMENTS)
    return "".join(FRAGMENTS[b % n] if b < 2 * n else NOISE[b % len(NOISE)] for b in data)


TEXT = st.binary(max_size=32).map(_text)

SOLUTIONS = [
    f'```json\n[{{"mask_2d": "{A}"}}, {{"mask_2d": "{B}"}}]\n```',
    "No target.",
    f"A {REF_START} white pumpkin {REF_END} {A} on {REF_START} a jute bag {REF_END} {B}.",
]
# Allowed values per reward: a set of exact values, or an interval.
RANGES = {
    "format_reward": {0.0, 1.0},
    "repetition_reward": {0.0, 1.0},
    "repetition_think_reward": {0.0, 1.0},
    "repetition_answer_reward": {0.0, 1.0},
}
TEXTUAL = {name: f for name, f in REWARDS.items() if name != "mask_iou_reward"}


def check(name: str, scores: list, n: int) -> None:
    assert len(scores) == n
    for score in scores:
        assert isinstance(score, float), (name, score)
        if name in RANGES:
            assert score in RANGES[name], (name, score)
        else:
            assert 0.0 <= score <= 1.0, (name, score)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(TEXT)
def test_textual_rewards_never_raise_and_stay_in_range(text):
    # Odd lengths go in conversational form (saves a second draw per example).
    completion = [{"role": "assistant", "content": text}] if len(text) % 2 else text
    completions = [completion] * len(SOLUTIONS)
    for name, f in TEXTUAL.items():
        check(name, f(None, completions, solution=SOLUTIONS, log_metric=lambda *_: None), len(SOLUTIONS))
    # The str.find format check decides exactly the reference's full-match regex.
    assert is_formatted(text) == (_FORMAT_RE.fullmatch(text) is not None)
    # The GT can be anything too (a noisy dataset): still no exception.
    for name, f in TEXTUAL.items():
        check(name, f(None, [text], solution=[text]), 1)


@pytest.fixture(scope="module")
def tokenizer():
    from samtok_rl.tiny import build_tiny_processor
    from samtok_rl.tokens import add_mask_tokens

    processor = build_tiny_processor("qwen2_5_vl")
    add_mask_tokens(processor)
    return processor.tokenizer


def test_bound_rewards_never_raise_on_random_ids(tokenizer):
    vocab = len(tokenizer)
    mask_ids = tokenizer.convert_tokens_to_ids(["<|mt_start|>", "<|mt_0123|>", "<|mt_0301|>", "<|mt_end|>"])
    marker_ids = tokenizer.convert_tokens_to_ids([REF_START, REF_END, tokenizer.eos_token, tokenizer.pad_token])
    bound = {name: bind_tokenizer(f, tokenizer) for name, f in TEXTUAL.items()}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(st.integers(0, vocab - 1), st.sampled_from(mask_ids + marker_ids)), max_size=40))
    def run(ids):
        for name, f in bound.items():
            check(name, f(None, None, completion_ids=[ids] * len(SOLUTIONS), solution=SOLUTIONS), len(SOLUTIONS))

    run()
