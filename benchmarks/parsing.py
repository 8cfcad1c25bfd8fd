"""Reading a completion stuck in a loop: the GCG grammars before (the reference regexes) and after (linear scans).

    python benchmarks/parsing.py

A policy that repeats `<|object_ref_start|> a` never closes the phrase; the lazy regexes re-read the rest of the text
for every opener (quadratic). Times are the best of 3, per completion.
"""

from __future__ import annotations

import re
import time

from samtok_rl.parsing import OBJ_REF_END, OBJ_REF_START, gcg_pairs, parse_gcg


PAIR_REGEX = re.compile(
    re.escape(OBJ_REF_START) + r"(.*?)\s*" + re.escape(OBJ_REF_END)
    + r"\s*<\|mt_start\|><\|mt_(\d+)\|><\|mt_(\d+)\|><\|mt_end\|>"
)  # fmt: skip
PHRASE_REGEX = re.compile(re.escape(OBJ_REF_START) + r"(.*?)" + re.escape(OBJ_REF_END), re.DOTALL)


def best(fn, text: str) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    print("| tokens (openers) | reward pairs: regex | reward pairs: scan | eval phrases: regex | eval phrases: scan |")
    print("|---:|---:|---:|---:|---:|")
    for openers in (1024, 4096):  # each repeat is 2 tokens: 2k and 8k tokens
        text = f"{OBJ_REF_START} a" * openers
        row = [
            best(PAIR_REGEX.findall, text),
            best(gcg_pairs, text),
            best(lambda t: list(PHRASE_REGEX.finditer(t)), text),
            best(parse_gcg, text),
        ]
        print(f"| {2 * openers:,} ({openers:,}) | " + " | ".join(f"{t * 1e3:,.2f} ms" for t in row) + " |")


if __name__ == "__main__":
    main()
