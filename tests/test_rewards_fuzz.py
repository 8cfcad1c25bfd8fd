"""Fuzz: no reward raises on any completion text, and every score stays in its range."""

import re

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


# ---------------------------------------------------------------------------------------------------------------------
# Adversarial 64 KB completions: nothing a policy writes makes a reward slower than linear in its length.
# ---------------------------------------------------------------------------------------------------------------------

SIZE = 64 * 1024
# Each pattern is repeated to 64 KB: unclosed and nested tags, openers without closers, span fragments, spans without
# phrases, phrases without spans, whitespace runs between markers (what lazy regexes re-read per opener).
PATTERNS = {
    "think opener": "<think>",
    "think closer": "</think>",
    "nested think/answer": "<think><answer></think>",
    "answer opener": "<answer>",
    "phrase opener": f"{REF_START} a",
    "phrase without span": f"{REF_START} a {REF_END} ",
    "phrase end + spaces": f"{REF_END}    ",
    "span opener": "<|mt_start|>",
    "span without end": "<|mt_start|><|mt_0001|>",
    "code fragments": "<|mt_<|mt_0123|",
    "one span repeated": A,
    "grounded pairs": f"{REF_START} a {REF_END} {A}",
}
PRESET_REWARDS = ["format_reward", "gres_mask_reward", "gres_mask_reward_hungarian", "repetition_reward",
                  "repetition_think_reward", "repetition_answer_reward", "gcg_mask_reward", "gcg_phrase_reward",
                  "gcg_grounded_reward"]  # fmt: skip


def adversarial_completions() -> dict[str, str]:
    return {name: (unit * (SIZE // len(unit) + 1))[:SIZE] for name, unit in PATTERNS.items()}


def reward_seconds(name: str, text: str) -> float:
    """One call of a reward on one completion (its parse caches cleared first), in seconds."""
    import time

    import rewards

    rewards.clear_caches()
    solution = f"<|object_ref_start|> a <|object_ref_end|> {A}" if name.startswith("gcg") else f"[{A}]"
    t0 = time.perf_counter()
    scores = REWARDS[name](None, [text], solution=[solution])
    seconds = time.perf_counter() - t0
    assert len(scores) == 1 and (scores[0] is None or 0.0 <= scores[0] <= 1.0)
    return seconds


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_adversarial_64kb_completions_score_in_linear_time(pattern):
    text = adversarial_completions()[pattern]
    # 64 KB in well under a second per reward (measured: at most a few ms, benchmarks/README.md); a quadratic scan
    # of these inputs takes minutes.
    slowest = max(reward_seconds(name, text) for name in PRESET_REWARDS)
    assert slowest < 1.0, f"{pattern}: {slowest:.2f} s"


# ---------------------------------------------------------------------------------------------------------------------
# GCG phrase keys: unusual whitespace inside phrases scores exactly as the reference rule.
# ---------------------------------------------------------------------------------------------------------------------

_PAIR_RE = re.compile(
    re.escape(REF_START) + r"(.*?)\s*" + re.escape(REF_END)
    + r"\s*<\|mt_start\|><\|mt_(\d+)\|><\|mt_(\d+)\|><\|mt_end\|>"
)  # fmt: skip
WORDS = ["cat", "Cat", "a", "dog", "white pumpkin"]
# str.isspace characters (tab, form feed, NBSP, ideographic space, NEL, line separator...), a newline (which ends a
# phrase in the reference grammar) and a zero-width space (not whitespace to str.strip).
ODD_SPACES = [
    " ", "  ", "\t", "\x0c", "\x0b", "\r", "\xa0", "\u3000", "\x1c", "\x85", "\u2028", "\u2009", "\n", "\u200b",
]  # fmt: skip
PHRASE = st.lists(st.sampled_from(WORDS + ODD_SPACES), max_size=8).map("".join)
SPAN = st.sampled_from([A, A1, B])
GCG_TEXT = st.lists(st.tuples(PHRASE, SPAN), max_size=4).map(
    lambda pairs: "A " + " and ".join(f"{REF_START} {p} {REF_END} {s}" for p, s in pairs) + "."
)


def reference_phrase_score(text: str, gt: str) -> float:
    """The reference GCG phrase part (CycleGRPO `text2mask.py`) written out plainly: its pair regex, its phrase key,
    empty keys dropped, unique predicted keys found in the GT over max(#pred, #GT), 1.0 when the GT has no phrase."""

    def phrases(s):
        keys = (" ".join(w.strip().lower() for w in p.split(" ") if w.strip()) for p, _, _ in _PAIR_RE.findall(s))
        return [k for k in keys if k]

    pred, gts = phrases(text), phrases(gt)
    if not gts:
        return 1.0
    return len(set(pred) & set(gts)) / max(len(pred), len(gts))


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(GCG_TEXT, GCG_TEXT)
def test_gcg_phrase_reward_equals_the_reference_rule(text, gt):
    assert REWARDS["gcg_phrase_reward"](None, [text], solution=[gt]) == [reference_phrase_score(text, gt)]
