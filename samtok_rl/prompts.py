"""Task prompts of SAMTok (GRES, GCG): the questions data preparation and evaluation ask, in the reference wording.

Reading the answers back is `samtok_rl.parsing`'s job.
"""

from __future__ import annotations

from samtok_rl.errors import UsageError


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


def check_template(task: str, template: str | None) -> None:
    """A GRES template must place the expression; otherwise every prompt would lose it."""
    if task == "gres" and template is not None and "{expression}" not in template:
        raise UsageError(
            f"the GRES template {template!r} has no {{expression}}: every prompt would lose its expression"
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


def asks_to_think(prompt) -> bool:
    """Whether a prompt (plain text, or conversational messages with text blocks) carries the R1 think/answer
    instruction; a missing prompt counts as asking.

    Example:
    >>> asks_to_think(conversation(gres_question("the cup"))), asks_to_think("Please segment the cup.")
    (True, False)
    """
    if not prompt:
        return True
    if isinstance(prompt, str):
        return R1_SUFFIX in prompt
    texts = []
    for message in prompt:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(b.get("text") or "" for b in content if isinstance(b, dict))
    return any(R1_SUFFIX in t for t in texts)


def conversation(question: str) -> list[dict]:
    """A one-turn conversational prompt with an image block before the question (TRL's VLM prompt format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
