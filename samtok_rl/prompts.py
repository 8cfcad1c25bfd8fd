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


def message_text(messages) -> str | None:
    """The text of a TRL prompt or completion: a string, or a conversational list of messages (contents concatenated).

    Message contents may be strings or lists of `{"type": "text", "text": ...}` blocks. Anything else gives `None`,
    which the rewards score as a missing response (`rewards._text.completion_text` is this function) and
    `asks_to_think` as a prompt that does not ask.

    Example:
    >>> message_text([{"role": "assistant", "content": "<answer>No target.</answer>"}])
    '<answer>No target.</answer>'
    >>> message_text(None) is None
    True
    """
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return None
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                block["text"]
                for block in content
                if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
            )
        else:
            return None
    return "".join(parts) if parts else None


def asks_to_think(prompt) -> bool:
    """Whether a prompt (plain text, or conversational messages with text blocks) carries the R1 think/answer
    instruction; a missing prompt counts as asking.

    Example:
    >>> asks_to_think(conversation(gres_question("the cup"))), asks_to_think("Please segment the cup.")
    (True, False)
    """
    if not prompt:
        return True
    text = message_text(prompt)
    return text is not None and R1_SUFFIX in text


def conversation(question: str) -> list[dict]:
    """A one-turn conversational prompt with an image block before the question (TRL's VLM prompt format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
