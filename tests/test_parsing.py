"""`samtok_rl.parsing`'s GCG grammars: the reference regexes' exact matches, in linear time.

The oracles below are the reference grammars written as regexes (what the rewards and the eval used before the
linear-time scans replaced them); hypothesis compares the two on strings built from the grammar's own pieces.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from samtok_rl.parsing import OBJ_REF_END, OBJ_REF_START, gcg_pairs, parse_gcg, parse_masks


PAIR_ORACLE = re.compile(
    re.escape(OBJ_REF_START) + r"(.*?)\s*" + re.escape(OBJ_REF_END)
    + r"\s*<\|mt_start\|><\|mt_(\d+)\|><\|mt_(\d+)\|><\|mt_end\|>"
)  # fmt: skip
PHRASE_ORACLE = re.compile(re.escape(OBJ_REF_START) + r"(.*?)" + re.escape(OBJ_REF_END), re.DOTALL)

PIECES = [
    OBJ_REF_START, OBJ_REF_END, "<|mt_start|>", "<|mt_end|>", "<|mt_0001|>", "<|mt_0258|>", "<|mt_7|>",
    "<|mt_start|><|mt_0012|><|mt_0300|><|mt_end|>", " ", "  ", "\n", "\n ", "\t", "a", "Cat", "b c", "<", "|", "\r",
    "\u00a0", "\x1c", "\u2028", "\x0b", "\x0c", "\u3000",
]  # fmt: skip
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


def pairs_oracle(text: str):
    # The reference key: split on single spaces, each piece stripped, empty pieces dropped, lower-cased (CycleGRPO).
    key = lambda p: " ".join(w.strip().lower() for w in p.split(" ") if w.strip())  # noqa: E731
    return [(key(p), (a, b)) for p, a, b in PAIR_ORACLE.findall(text)]


def parse_gcg_oracle(text: str):
    matches = list(PHRASE_ORACLE.finditer(text))
    phrases, codes = [], []
    for k, m in enumerate(matches):
        phrases.append(m.group(1).strip())
        stop = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        spans = parse_masks(text[m.end() : stop])
        codes.append(spans[0] if spans else None)
    return phrases, codes


@given(texts)
@settings(max_examples=3000, deadline=None)
def test_gcg_pairs_equal_the_reference_regex(text):
    assert gcg_pairs(text) == pairs_oracle(text)


@given(texts)
@settings(max_examples=3000, deadline=None)
def test_parse_gcg_equals_the_lazy_regex(text):
    _, phrases, codes = parse_gcg(text)
    assert (phrases, codes) == parse_gcg_oracle(text)


def test_loops_are_read_in_linear_steps():
    """A completion stuck repeating the phrase opener (the input that made the regexes quadratic) is read exactly as
    the regexes read it, and the scans' work grows linearly: their `str.find` calls are counted, not timed."""
    calls = {"n": 0}

    class Counting(str):
        def find(self, *args):
            calls["n"] += 1
            return str.find(self, *args)

    counts = {}
    for repeats in (500, 2000):
        text = f"{OBJ_REF_START} a " * repeats + f"{OBJ_REF_END} <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>"
        calls["n"] = 0
        assert gcg_pairs(Counting(text)) == pairs_oracle(text) and len(pairs_oracle(text)) == 1
        assert parse_gcg(Counting(text))[1:] == parse_gcg_oracle(text)
        counts[repeats] = calls["n"]
    assert counts[2000] <= 4 * counts[500] + 8  # 4x the input, at most 4x the scans
