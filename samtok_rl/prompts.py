"""Task prompts and answer formats of SAMTok (GRES, GCG), and the reference answer-extraction rules.

Shared by data preparation (prompts, reference answers), the rewards (think/answer split, GCG pairs) and the
evaluation runner (parsing predictions), so all three read model outputs the same way.
"""

from __future__ import annotations

import re

from samtok_rl.tokens import parse_masks


OBJ_REF_START = "<|object_ref_start|>"
OBJ_REF_END = "<|object_ref_end|>"
NO_TARGET = "No target."

# The R1 instruction appended (after one space) to the task question for RL models (SAMTok qwen25vl_rl evals,
# CycleGRPO r1v.jinja).
R1_SUFFIX = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>"
)

GRES_TEMPLATE = "Please segment {expression} in this image."
# Exactly as the reference eval's Python literal evaluates: 5 spaces after "interleaved" (a line-continuation
# artefact the released models were evaluated with).
GCG_QUESTION = (
    "Could you please give me a brief description of the image? Please respond with interleaved     "
    "segmentation masks for the corresponding parts of the answer."
)


def gres_question(expression: str, think: bool = True, template: str = GRES_TEMPLATE) -> str:
    """The GRES question for one referring expression (lower-cased and stripped, as SAMTok's eval does).

    Example:
    >>> gres_question("The Left Cup ", think=False)
    'Please segment the left cup in this image.'
    """
    question = template.format(expression=expression.strip().lower())
    return f"{question} {R1_SUFFIX}" if think else question


def gcg_question(think: bool = True, question: str = GCG_QUESTION) -> str:
    """The GCG question; the RL variant replaces the final `.` by ` and highlight the phrases.` plus the R1 suffix."""
    if not think:
        return question
    return f"{question.rstrip().removesuffix('.')} and highlight the phrases. {R1_SUFFIX}"


def conversation(question: str) -> list[dict]:
    """A one-turn conversational prompt with an image block before the question (TRL's VLM prompt format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def split_think_answer(text: str) -> tuple[str | None, str | None]:
    """Split a response into its think and answer parts with the reference's robust rules.

    The first `<think>…</think>` and the first `<answer>…</answer>` are taken. If either is missing, the text is
    split at the first `<answer>` (or, failing that, at the first `</think>`): the head fills a missing think, the
    tail a missing answer. Otherwise a missing part stays `None`.

    Example:
    >>> split_think_answer("<think>t</think><answer>a</answer>")
    ('t', 'a')
    >>> split_think_answer("<answer>a</answer>")
    ('', 'a')
    >>> split_think_answer("<think>t</think>a")
    ('t', 'a')
    >>> split_think_answer("a")
    (None, None)
    """
    if not isinstance(text, str):
        return None, None
    # Same result as re.search(r"<think>(.*?)</think>", re.DOTALL) (and its answer twin) at a fraction of the cost:
    # that regex matches at the first `<think>` when any `</think>` follows it, and nowhere otherwise.
    i = text.find("<think>")
    j = text.find("</think>", i + 7) if i >= 0 else -1
    k = text.find("<answer>")
    m = text.find("</answer>", k + 8) if k >= 0 else -1
    think = text[i + 7 : j] if j >= 0 else None
    answer = text[k + 8 : m] if m >= 0 else None
    if think is None or answer is None:
        for sep in ("<answer>", "</think>"):
            if sep in text:
                head, tail = text.split(sep, 1)
                think = head if think is None else think
                answer = tail if answer is None else answer
                break
    return think, answer


_TAG_RE = re.compile(r"<[^>]*>")
_WS_RE = re.compile(r"\s+")
_PHRASE_RE = re.compile(re.escape(OBJ_REF_START) + r"(.*?)" + re.escape(OBJ_REF_END), re.DOTALL)


def gcg_caption(text: str) -> str:
    """The caption of a GCG answer: every `<…>` tag removed and whitespace collapsed (the reference eval)."""
    return _WS_RE.sub(" ", _TAG_RE.sub("", text)).strip()


def parse_gcg(text: str) -> tuple[str, list[str], list[tuple[int, int] | None]]:
    """Read a GCG answer: caption, grounded phrases, and for each phrase the mask that follows it.

    Each phrase is paired with the first span between its `<|object_ref_end|>` and the next phrase (repair mode of
    `parse_masks`); a phrase without one gets `None`, so the caller can report the mismatch instead of shifting the
    pairing of later phrases.

    Example:
    >>> parse_gcg("A <|object_ref_start|> cat <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|> sits.")
    ('A cat sits.', ['cat'], [(1, 2)])
    """
    if not isinstance(text, str):
        return "", [], []
    phrases: list[str] = []
    codes: list[tuple[int, int] | None] = []
    matches = list(_PHRASE_RE.finditer(text))
    for k, m in enumerate(matches):
        phrases.append(m.group(1).strip())
        stop = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        spans = parse_masks(text[m.end() : stop])
        codes.append(spans[0] if spans else None)
    return gcg_caption(text), phrases, codes
