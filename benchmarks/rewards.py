"""Throughput of the textual GRES rewards on one generation batch, beside a straightforward reference implementation.

4096 completions (512 prompts x 8 generations, 3 spans each; 1 prompt in 8 is a no-target prompt) go through the
GRES preset (format + graded mask accuracy + non-repeat on think + non-repeat on answer). The straightforward
version applies the reference rules as written: each rule extracts what it needs with its own regex passes per
completion. Both must give identical totals; the parse caches are cleared before every timed run.

Run: `.venv/bin/python benchmarks/rewards.py [--n 4096] [--repeats 5]`
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path


# Run as a script, this file's folder is sys.path[0] and this file would shadow the `rewards` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rewards import PRESETS, clear_caches, resolve  # noqa: E402
from samtok_rl.tokens import format_mask  # noqa: E402


# ------------------------------------------------------------------------------------------------------------------
# The straightforward implementation: the reference rules (format, graded set match, non-repeat), one regex pass per rule per completion.
# ------------------------------------------------------------------------------------------------------------------

SPAN = r"<\|mt_start\|><\|mt_\d{4}\|><\|mt_\d{4}\|><\|mt_end\|>"


def extract(response):
    think = re.search(r"<think>(.*?)</think>", response, re.DOTALL)
    answer = re.search(r"<answer>(.*?)</answer>", response, re.DOTALL)
    think, answer = (think.group(1) if think else None), (answer.group(1) if answer else None)
    if think is None or answer is None:
        for sep in ("<answer>", "</think>"):
            if sep in response:
                head, tail = response.split(sep, 1)
                think, answer = (head if think is None else think), (tail if answer is None else answer)
                break
    return think, answer


def grade(p, t):
    pt, tt = re.findall(r"<\|[^|]*\|>", p), re.findall(r"<\|[^|]*\|>", t)
    if pt == tt:
        return 1.0
    if pt[:-1] == tt[:-1]:
        return 0.8
    if pt[:-2] == tt[:-2]:
        return 0.4
    return 0.0


def accuracy(answer, gt):
    if answer is None:
        return 0.0
    pred, true = re.findall(SPAN, answer), re.findall(SPAN, gt)
    if not pred and not true:
        return 1.0
    credit = sum(max((grade(p, t) for t in set(true)), default=0.0) for p in set(pred))
    return credit / max(len(pred), len(true))


def no_target(response):
    if re.search(r"<\|mt_(?:start|end|\d{4})\|>", response):
        return 0.0
    return 1.0 if "No target." in response else 0.2


def non_repeat(s, limit=3):
    if s is None:
        return 0.0
    return 0.0 if any(s.count(span) > limit for span in re.findall(SPAN, s)) else 1.0


def straightforward_gres(responses, solutions):
    fmt = [1.0 if re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", r, re.DOTALL) else 0.0 for r in responses]
    acc = [
        no_target(r) if gt.strip() == "No target." else accuracy(extract(r)[1], gt)
        for r, gt in zip(responses, solutions)
    ]
    nr_think = [non_repeat(extract(r)[0]) for r in responses]
    nr_answer = [non_repeat(extract(r)[1]) for r in responses]
    return [sum(x) for x in zip(fmt, acc, nr_think, nr_answer)]


# ------------------------------------------------------------------------------------------------------------------


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` GRES completions, 8 per prompt, 3 spans each (exact, coarse-only, unrelated, duplicated)."""
    rng = random.Random(seed)
    completions, solutions = [], []
    for prompt in range(n // 8):
        no_target = prompt % 8 == 7
        gt_codes = [] if no_target else [(rng.randrange(256), rng.randrange(256)) for _ in range(rng.randint(1, 3))]
        gt = (
            "No target."
            if no_target
            else "```json\n"
            + json.dumps([{"mask_2d": format_mask(*c), "label": "object"} for c in gt_codes])
            + "\n```"
        )
        for _ in range(8):
            codes = []
            for _ in range(3):
                kind = rng.random()
                if gt_codes and kind < 0.5:
                    codes.append(rng.choice(gt_codes))
                elif gt_codes and kind < 0.7:
                    codes.append((rng.choice(gt_codes)[0], rng.randrange(256)))
                else:
                    codes.append((rng.randrange(256), rng.randrange(256)))
            think = " ".join(rng.choice(("the", "object", "left", "cup", "near", "table", "red")) for _ in range(40))
            answer = (
                "```json\n" + json.dumps([{"mask_2d": format_mask(*c), "label": "object"} for c in codes]) + "\n```"
            )
            completions.append(f"<think>{think}</think>\n<answer>{answer}</answer>")
            solutions.append(gt)
    return completions, solutions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    completions, solutions = make_batch(args.n)
    funcs = [resolve(name) for name in PRESETS["gres"]]

    def fast():
        clear_caches()
        scores = [f(None, completions, solution=solutions) for f in funcs]
        return [sum(x) for x in zip(*scores)]

    def straightforward():
        re.purge()  # the compiled-pattern cache is fair game, but start each run equal
        return straightforward_gres(completions, solutions)

    assert fast() == straightforward(), "the two implementations disagree"
    rows = []
    for name, fn in (("straightforward (regex per rule)", straightforward), ("rewards (GRES preset)", fast)):
        best = min(_timed(fn) for _ in range(args.repeats))
        rows.append((name, args.n / best, best))
    base = rows[0][1]
    print(f"{args.n} GRES completions x 3 spans; rewards: {', '.join(PRESETS['gres'])}; best of {args.repeats}")
    print(f"| {'implementation':<34} | {'completions/s':>13} | {'ms / batch':>10} | {'ratio':>5} |")
    print(f"|{'-' * 36}|{'-' * 15}|{'-' * 12}|{'-' * 7}|")
    for name, rate, best in rows:
        print(f"| {name:<34} | {rate:>13,.0f} | {best * 1e3:>10.1f} | {rate / base:>4.1f}x |")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
