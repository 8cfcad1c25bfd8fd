"""Codec throughput: parse 100k completions (~200 chars of text and 3 spans each) from text and from token ids,
beside the seed README's approach (count 4-digit tokens; if odd, repair with three regex substitutions and
re-extract strict spans) in the same run.

    .venv/bin/python benchmarks/codec.py [--n 100000]

Prints a markdown table (completions/s per path and the ratio to the seed approach).
"""

import argparse
import random
import re
import time

from transformers import AutoProcessor

from samtok_rl.parsing import parse_mask_ids, parse_masks
from samtok_rl.tiny import build_tiny_vlm
from samtok_rl.tokens import MaskTokenIds, format_mask


# --- the seed README's approach, verbatim in behaviour ------------------------------------------------------------
def _seed_v1(text):
    return [int(x) for x in re.findall(r"<\|mt_(\d{4})\|>", text)]


def _seed_v2(text):
    pattern = re.compile(r"<\|mt_start\|><\|mt_(\d{4})\|><\|mt_(\d{4})\|><\|mt_end\|>")
    out = []
    for a, b in pattern.findall(text):
        out += [int(a), int(b)]
    return out


def _seed_fix(text):
    text = re.sub(r"(<\|mt_start\|>)(<\|mt_\d+\|>)(<\|mt_\d+\|>)(?:<\|mt_\d+\|>)+<\|mt_end\|>", r"\1\2\3<|mt_end|>", text)
    text = re.sub(r"(<\|mt_start\|>)(<\|mt_\d+\|>)(<\|mt_end\|>)", r"\1\2<|mt_9999|><|mt_end|>", text)
    text = re.sub(r"(<\|mt_start\|>)(<\|mt_\d+\|>)(?!<\|mt_)", r"\1\2<|mt_9999|><|mt_end|>", text)
    return text


def seed_parse(text):
    ids = _seed_v1(text)
    if len(ids) % 2:
        ids = _seed_v2(_seed_fix(text))
    out = []
    for k in range(len(ids) // 2):
        c0, c1 = ids[2 * k], ids[2 * k + 1] - 256
        if 0 <= c0 < 256:  # the GRES/RL builders drop a pair with an invalid level-0 code
            out.append((c0, c1 if 0 <= c1 < 256 else -1))
    return out


WORDS = "the a cup on left right table person red blue small large near far object of in with and".split()


def make_completions(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        think = " ".join(rng.choice(WORDS) for _ in range(12))
        words = [" ".join(rng.choice(WORDS) for _ in range(7)) for _ in range(4)]
        spans = [format_mask(rng.randrange(256), rng.randrange(256)) for _ in range(3)]
        if i % 10 == 0:  # a span missing its second code now and then, so the repair paths run too
            spans[1] = spans[1][: len("<|mt_start|><|mt_0000|>")] + "<|mt_end|>"
        answer = f"{words[0]} {spans[0]} {words[1]} {spans[1]} {words[2]} {spans[2]} {words[3]}"
        out.append(f"<think>{think}</think><answer>{answer}</answer>")
    return out


def rate(fn, items):
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    texts = make_completions(args.n)
    tokenizer = AutoProcessor.from_pretrained(build_tiny_vlm("qwen2_5_vl")).tokenizer
    mask_ids = MaskTokenIds.from_tokenizer(tokenizer)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Same answers on the well-formed completions (the seed drops nothing we keep there).
    agree = sum(parse_masks(t) == seed_parse(t) for t in texts) / len(texts)

    seed = rate(seed_parse, texts)
    rows = [
        ("seed README (v1, fix + v2 when odd)", seed),
        ("parse_masks(text, repair=True)", rate(parse_masks, texts)),
        ("parse_masks(text, repair=False)", rate(lambda t: parse_masks(t, repair=False), texts)),
        ("parse_mask_ids(ids, repair=True)", rate(lambda x: parse_mask_ids(x, mask_ids), ids)),
    ]
    print(f"{args.n} completions, ~{sum(map(len, texts)) // len(texts)} chars, 3 spans each; "
          f"agreement with the seed parse: {agree:.1%}\n")
    print("| path | completions/s | vs seed |")
    print("|---|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r:,.0f} | {r / seed:.2f}x |")


if __name__ == "__main__":
    main()
