"""Built-in rewards: every worked example of SAMTok's RL reward rules as literal completions -> exact scores, plus edge cases."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import rewards
from rewards import PRESETS, REWARDS, bind_tokenizer, resolve
from rewards.gres import no_target_score
from rewards.matching import graded_set_score, hungarian_set_score
from samtok_rl.errors import UsageError
from samtok_rl.parsing import find_span_codes
from samtok_rl.tokens import format_mask


A = format_mask(123, 45)  # S(0123, 0301)
A1 = format_mask(123, 46)  # A': same first code
A2 = format_mask(124, 45)  # A'': same second code
B = format_mask(7, 144)  # S(0007, 0400)
SPANS = {"A": A, "A'": A1, "A''": A2, "B": B}
NT = "No target."
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"


def spans_of(names: str) -> list[str]:
    return [SPANS[n] for n in names.split()]


def codes_of(names: str) -> list[tuple[str, str]]:
    """The code pairs of the named spans, as the rewards compare them."""
    return [code for span in spans_of(names) for code in find_span_codes(span)]


def gres_gt(names: str) -> str:
    """The reference GRES answer text (the SFT answer format) for the given spans."""
    items = [{"mask_2d": s, "label": "object"} for s in spans_of(names)]
    return "```json\n" + json.dumps(items) + "\n```"


def ref(phrase: str) -> str:
    return f"{REF_START} {phrase} {REF_END} "


GCG_GT = f"{A} {ref('white pumpkin')}{A} lays on {ref('a jute bag')}{B}."


# ---------------------------------------------------------------------------------------------------------------------
# The reference rules' worked examples: graded match, set accuracy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pred", "gt", "expected"), [("A", "A", 1.0), ("A'", "A", 0.4), ("A''", "A", 0.0)])
def test_graded_match(pred, gt, expected):
    assert graded_set_score(codes_of(pred), codes_of(gt)) == expected


SET_TABLE = [
    ("A", "A", 1.0),
    ("A A", "A", 0.5),
    ("A A A", "A", 1 / 3),
    ("A", "A B", 0.5),
    ("B A", "A B", 1.0),
    ("A'", "A", 0.4),
    ("A''", "A", 0.0),
    ("A' A'", "A", 0.2),
    ("A A'", "A", 0.7),
    ("A B", "A", 0.5),
    ("A A B", "A B", 2 / 3),
    ("", "A B", 0.0),
    ("A", "", 0.0),
    ("", "", 1.0),
]


@pytest.mark.parametrize(("pred", "gt", "expected"), SET_TABLE)
def test_set_accuracy(pred, gt, expected):
    assert graded_set_score(codes_of(pred), codes_of(gt)) == pytest.approx(expected)
    # The same through the reward (GT as the reference answer text; an empty GT list is "```json\n[]\n```",
    # which keeps the set rule rather than the no-target rule).
    response = f"<think>t</think><answer>{''.join(spans_of(pred))}</answer>"
    solution = gres_gt(gt) if gt else "```json\n[]\n```"
    assert rewards.gres_mask_reward(None, [response], solution=[solution]) == [pytest.approx(expected)]


def test_set_accuracy_missing_answer_part():
    for gt in (gres_gt("A"), "```json\n[]\n```"):
        assert rewards.gres_mask_reward(None, [A, "no tags at all"], solution=[gt, gt]) == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------------
# Worked examples: GRES totals (F + A + NR(think) + NR(answer))
# ---------------------------------------------------------------------------------------------------------------------

GRES_TOTALS = [
    (f"<think>t</think><answer>{A}</answer>", "A", (1, 1, 1, 1)),
    (f"<think>t</think>\n<answer>{A}</answer>", "A", (1, 1, 1, 1)),
    (f"\n<think>t</think><answer>{A}</answer>", "A", (0, 1, 1, 1)),
    (f"<think>t</think><answer>{A}</answer><|im_end|>", "A", (0, 1, 1, 1)),
    (f"<answer>{A}</answer>", "A", (0, 1, 1, 1)),
    (f"<think>t</think>{A}", "A", (0, 1, 1, 1)),
    (A, "A", (0, 0, 0, 0)),
    (f"<think>{A * 4}</think><answer>{A}</answer>", "A", (1, 1, 0, 1)),
    (f"<think>t</think><answer>{A * 4}</answer>", "A", (1, 0.25, 1, 0)),
    (f"<think>t</think><answer>{NT}</answer>", "A", (1, 0, 1, 1)),
    (f"<think>t</think><answer>{NT}</answer>", NT, (1, 1, 1, 1)),
    (f"<think>t</think><answer>{A}</answer>", NT, (1, 0, 1, 1)),
]


@pytest.mark.parametrize(("response", "gt", "parts"), GRES_TOTALS)
def test_gres_totals(response, gt, parts):
    solution = [NT if gt == NT else gres_gt(gt)]
    funcs = [resolve(name) for name in PRESETS["gres"]]
    got = tuple(f(None, [response], solution=solution)[0] for f in funcs)
    assert got == pytest.approx(parts)
    assert sum(got) == pytest.approx(sum(parts))


# ---------------------------------------------------------------------------------------------------------------------
# Worked examples: no-target rule (on the full response)
# ---------------------------------------------------------------------------------------------------------------------

NO_TARGET_TABLE = [
    (f"<answer>{NT}</answer>", 1.0),
    ("I cannot identify the object.", 0.2),
    (f"<answer>{NT}</answer>{A}", 0.0),
    (f"<answer>{NT}</answer><|mt_start|>", 0.0),
    (f"<answer>{NT}</answer><|mt_0003|>", 0.0),
    # Decisions beyond the table: fragments inside <think> count; the phrase is case-sensitive; None is empty text.
    (f"<think>maybe <|mt_end|></think><answer>{NT}</answer>", 0.0),
    ("<answer>no target</answer>", 0.2),
    ("", 0.2),
]


@pytest.mark.parametrize(("response", "expected"), NO_TARGET_TABLE)
def test_no_target_rule(response, expected):
    assert no_target_score(response) == expected
    assert rewards.gres_mask_reward(None, [response], solution=[NT]) == [expected]
    assert rewards.gres_mask_reward_hungarian(None, [response], solution=[f" {NT}\n"]) == [expected]


def test_no_target_missing_response():
    assert no_target_score(None) == 0.2
    assert rewards.gres_mask_reward(None, [None, 17], solution=[NT, NT]) == [0.2, 0.2]


# ---------------------------------------------------------------------------------------------------------------------
# Worked examples: GCG
# ---------------------------------------------------------------------------------------------------------------------

GCG_TABLE = [
    (GCG_GT, (1.0, 1.0, 1)),
    (f"{A} {ref('white pumpkin')}{B} lays on {ref('a jute bag')}{A}.", (1.0, 1.0, 1)),
    (f"{ref('White  Pumpkin')}{A}", (0.5, 0.5, 1)),
    (f"{A} {ref('white pumpkin')}{A1} lays on {ref('a jute bag')}{B}.", (0.7, 1.0, 1)),
    (f"{ref('white pumpkin')}{A} {ref('white pumpkin')}{A} and {ref('a jute bag')}{B}", (2 / 3, 2 / 3, 1)),
    (f"{A} {ref('white pumpkin')} lays on {ref('a jute bag')}.", (0.0, 0.0, 1)),
]


@pytest.mark.parametrize(("prediction", "parts"), GCG_TABLE)
def test_gcg_totals(prediction, parts):
    funcs = [resolve(name) for name in PRESETS["gcg"]]
    got = tuple(f(None, [prediction], solution=[GCG_GT])[0] for f in funcs)
    assert got == pytest.approx(parts)


def test_gcg_edge_cases():
    plain = "A caption without grounding."
    # Both sides without pairs: defined as 1.0 (the reference divides by zero); prediction with pairs vs none: 0.
    assert rewards.gcg_mask_reward(None, [plain, f"{ref('x')}{A}"], solution=[plain, plain]) == [1.0, 0.0]
    assert rewards.gcg_phrase_reward(None, [plain, f"{ref('x')}{A}"], solution=[plain, plain]) == [1.0, 1.0]
    assert rewards.gcg_grounded_reward(None, [plain], solution=[plain]) == [1.0]
    # Missing response: 0 everywhere.
    for f in (rewards.gcg_mask_reward, rewards.gcg_phrase_reward, rewards.gcg_grounded_reward):
        assert f(None, [None], solution=[GCG_GT]) == [0.0]
    # Spans of any digit count pair up (reference GCG grammar); an empty phrase gives a mask but no phrase.
    odd = f"{REF_START}{REF_END}<|mt_start|><|mt_123|><|mt_0301|><|mt_end|>"
    assert rewards.gcg_mask_reward(None, [odd], solution=[GCG_GT]) == [0.0]
    assert rewards.gcg_phrase_reward(None, [f"{REF_START}{REF_END}{A}"], solution=[GCG_GT]) == [0.0]
    assert rewards.gcg_mask_reward(None, [f"{REF_START}{REF_END}{A}"], solution=[GCG_GT]) == [0.5]


GROUNDED_TABLE = [
    (GCG_GT, 1.0),
    (f"{ref('white pumpkin')}{B} {ref('a jute bag')}{A}", 0.0),  # swapped: no credit
    (f"{ref('white pumpkin')}{A1} {ref('a jute bag')}{B}", 0.7),
    (f"{ref('white pumpkin')}{A} {ref('white pumpkin')}{A}", 0.5),  # duplicate pair once
    (f"{ref('a pumpkin')}{A} {ref('a jute bag')}{B}", 0.5),  # wrong phrase: its mask earns nothing
]


@pytest.mark.parametrize(("prediction", "expected"), GROUNDED_TABLE)
def test_gcg_grounded(prediction, expected):
    assert rewards.gcg_grounded_reward(None, [prediction], solution=[GCG_GT]) == [pytest.approx(expected)]


# ---------------------------------------------------------------------------------------------------------------------
# Hungarian GRES variant
# ---------------------------------------------------------------------------------------------------------------------

HUNGARIAN_TABLE = [
    ("A", "A", 1.0),
    ("A A", "A", 0.5),
    ("A A'", "A", 0.5),  # reference: 0.7
    ("A A'", "A B", 0.5),  # reference rule: 0.7 (the hedge it rewards)
    ("A' A'", "A", 0.2),  # reference: 0.2; one-to-one: 0.4 / 2
    ("B A", "A B", 1.0),
    ("A' B", "A B", 0.7),
]


@pytest.mark.parametrize(("pred", "gt", "expected"), HUNGARIAN_TABLE)
def test_hungarian(pred, gt, expected):
    assert hungarian_set_score(codes_of(pred), codes_of(gt)) == pytest.approx(expected)
    response = f"<think>t</think><answer>{''.join(spans_of(pred))}</answer>"
    assert rewards.gres_mask_reward_hungarian(None, [response], solution=[gres_gt(gt)]) == [pytest.approx(expected)]


# ---------------------------------------------------------------------------------------------------------------------
# Malformed spans, empty completions, unicode noise, conversational completions, None rows
# ---------------------------------------------------------------------------------------------------------------------

MALFORMED = [
    "<|mt_start|><|mt_0123|><|mt_end|>",  # one code
    "<|mt_start|><|mt_123|><|mt_0301|><|mt_end|>",  # 3 digits
    "<|mt_start|><|mt_0123|> <|mt_0301|><|mt_end|>",  # whitespace inside
    "<|mt_start|><|mt_0123|><|mt_0301|>",  # no end token
    "<|mt_0123|><|mt_0301|><|mt_end|>",  # no start token
    "<|mt_start|><|mt_0123|><|mt_0301|><|mt_0400|><|mt_end|>",  # three codes
]


@pytest.mark.parametrize("span", MALFORMED)
def test_malformed_spans_are_invisible(span):
    response = f"<think>t</think><answer>{span}</answer>"
    assert rewards.gres_mask_reward(None, [response], solution=[gres_gt("A")]) == [0.0]
    assert rewards.gres_mask_reward(None, [response], solution=[NT]) == [0.0]  # still a fragment
    assert REWARDS["repetition_answer_reward"](None, [f"<answer>{span * 5}</answer>"]) == [1.0]
    assert rewards.format_reward(None, [response]) == [1.0]


def test_empty_completion():
    scores = {
        name: f(None, [""], solution=[GCG_GT if name.startswith("gcg") else gres_gt("A")])
        for name, f in REWARDS.items()
        if name != "mask_iou_reward"
    }
    assert scores == {
        "format_reward": [0.0],
        "gres_mask_reward": [0.0],
        "gres_mask_reward_hungarian": [0.0],
        "repetition_reward": [1.0],  # no span repeats in the (empty) full response
        "repetition_think_reward": [0.0],  # missing think part
        "repetition_answer_reward": [0.0],
        "gcg_mask_reward": [0.0],
        "gcg_phrase_reward": [0.0],
        "gcg_grounded_reward": [0.0],
    }


def test_unicode_noise():
    response = f"<think>日本語 🙂 \u200b\x00</think><answer>\ufeff{A}\u00a0ü{B}</answer>"
    assert rewards.gres_mask_reward(None, [response], solution=[gres_gt("A B")]) == [1.0]
    assert rewards.format_reward(None, [response]) == [1.0]
    assert rewards.gcg_phrase_reward(
        None, [f"{ref('Ünïcode  фраза')}{A}"], solution=[f"{ref('ünïcode фраза')}{A}"]
    ) == [1.0]


def test_conversational_completions_score_like_text():
    texts = [response for response, _, _ in GRES_TOTALS] + [prediction for prediction, _ in GCG_TABLE]
    solutions = [gres_gt("A")] * len(GRES_TOTALS) + [GCG_GT] * len(GCG_TABLE)
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    for name, f in REWARDS.items():
        if name == "mask_iou_reward":
            continue
        expected = f(None, texts, solution=solutions)
        assert f(None, conversational, solution=solutions) == expected, name
        assert f(None, blocks, solution=solutions) == expected, name


def test_rows_without_ground_truth_or_of_another_task():
    gres_row, gcg_row = f"<answer>{A}</answer>", f"{ref('x')}{A}"
    assert rewards.gres_mask_reward(None, [gres_row]) == [None]  # no solution column: the reward does not apply
    both = dict(solution=[gres_gt("A"), f"{ref('x')}{A}"], task=["gres", "gcg"])
    assert rewards.gres_mask_reward(None, [gres_row, gcg_row], **both) == [1.0, None]
    assert rewards.gcg_mask_reward(None, [gres_row, gcg_row], **both) == [None, 1.0]
    assert rewards.format_reward(None, [gres_row, gcg_row], **both) == [0.0, 0.0]


@pytest.mark.parametrize("solution", [None, 3])
def test_a_row_of_the_task_without_a_reference_answer_is_a_data_error(solution):
    with pytest.raises(UsageError, match=rf"gres reward, row 1: the solution is {solution}"):
        rewards.gres_mask_reward(None, ["a", "b"], solution=[gres_gt("A"), solution])


def test_rows_and_solutions_must_pair_up():
    with pytest.raises(UsageError, match="3 completions but 2 solutions"):
        rewards.gcg_mask_reward(None, ["a", "b", "c"], solution=["x", "y"])


@pytest.mark.parametrize("bad", [["1.0", 0.5], [0.5], [True, 0.5], 0.5])
def test_a_plug_in_reward_returning_no_floats_is_named(bad):
    def my_reward(prompts, completions, **kwargs):
        return bad

    from samtok_rl.tiny import build_tiny_processor

    bound = rewards.bind_tokenizer(my_reward, build_tiny_processor("qwen2_5_vl"))
    with pytest.raises(UsageError, match="reward my_reward returned"):
        bound(None, ["a", "b"])


def test_monitors():
    logged: dict[str, list[float]] = {}

    def log_metric(name, value):
        logged.setdefault(name, []).append(value)

    completions = [
        f"<think>t</think><answer>{A}{A}<|mt_start|><|mt_0001|><|mt_end|></answer>",  # 2 spans, 1 dup, 1 malformed
        f"<think>t</think><answer>{NT}</answer>",  # target row answered No target.
        f"<think>t</think><answer>{B}</answer>",  # no-target row answered with a mask
        f"<think>t</think><answer>{NT}</answer>",  # no-target row, correct
    ]
    solution = [gres_gt("A"), gres_gt("A B"), NT, NT]
    rewards.gres_mask_reward(None, completions, solution=solution, log_metric=log_metric)
    assert logged == {
        "gres/pred_masks": [3 / 4],
        "gres/gt_masks": [3 / 4],
        "gres/duplicate_span_rate": [1 / 3],
        "gres/malformed_span_rate": [1 / 4],
        "gres/no_target_with_masks": [1 / 2],
        "gres/target_said_no_target": [1 / 2],
    }
    logged.clear()
    rewards.gcg_mask_reward(
        None, [GCG_GT, f"{ref('x')}{A}{ref('y')}{A}"], solution=[GCG_GT] * 2, log_metric=log_metric
    )
    assert logged == {"gcg/pred_pairs": [2.0], "gcg/gt_pairs": [2.0], "gcg/duplicate_mask_rate": [1 / 4]}


# ---------------------------------------------------------------------------------------------------------------------
# Registry, resolve, pickling
# ---------------------------------------------------------------------------------------------------------------------


def test_registry_names_and_presets():
    assert all(name == f.__name__ for name, f in REWARDS.items())
    assert all(name in REWARDS for preset in PRESETS.values() for name in preset)
    from trl.trainer.utils import get_callable_name

    assert all(get_callable_name(f) == name for name, f in REWARDS.items())


def test_resolve_three_forms(tmp_path):
    assert resolve("gres_mask_reward") is rewards.gres_mask_reward
    assert resolve("rewards.format.format_reward") is rewards.format_reward
    example = Path(rewards.__file__).parent / "examples" / "length_penalty.py"
    penalty = resolve(f"{example}:length_penalty_reward")
    assert penalty(None, ["a", "b"], completion_ids=[[1] * 512, [1]]) == [-1.0, 0.0]
    assert pickle.loads(pickle.dumps(penalty)) is penalty
    with pytest.raises(ValueError, match="known: format_reward, gcg_grounded_reward"):
        resolve("gres_mask")


def test_every_builtin_pickles():
    solution = [gres_gt("A B")]
    completion = [f"<think>{A * 4}</think><answer>{A}{A1}</answer>"]
    for name, f in REWARDS.items():
        clone = pickle.loads(pickle.dumps(f))
        assert clone.__name__ == name
        if name != "mask_iou_reward":
            assert clone(None, completion, solution=solution) == f(None, completion, solution=solution)
    custom = pickle.loads(pickle.dumps(rewards.get_repetition_reward(limit=5, part="think")))
    assert (custom.limit, custom.part, custom.__name__) == (5, "think", "repetition_think_reward")
    iou = pickle.loads(pickle.dumps(rewards.get_mask_iou_reward("some/folder", device="cpu")))
    assert (iou.mask_tokenizer, iou.device, iou._loaded) == ("some/folder", "cpu", None)


def test_repetition_factory_rejects_unknown_part():
    with pytest.raises(ValueError, match="part must be one of"):
        rewards.get_repetition_reward(part="both")


def test_unconfigured_mask_iou_reward_says_how_to_configure():
    # Rows that need no decoding are scored without a tokenizer; the first decode asks for one.
    assert REWARDS["mask_iou_reward"](None, ["<answer>No target.</answer>"], gt_masks=[[]], image=[None]) == [1.0]
    with pytest.raises(ValueError, match="get_mask_iou_reward"):
        REWARDS["mask_iou_reward"](
            None, [f"<answer>{A}</answer>"], gt_masks=[[_rle(np.ones((4, 4), bool))]], image=["x"]
        )


# ---------------------------------------------------------------------------------------------------------------------
# Text vs token ids (tiny Qwen tokenizers)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def processor(request):
    from samtok_rl.tiny import build_tiny_processor
    from samtok_rl.tokens import add_mask_tokens

    processor = build_tiny_processor(request.param)
    add_mask_tokens(processor)  # as the entry point does: non-special tokens that survive TRL's decoding
    return processor


def test_ids_and_text_give_identical_scores(processor):
    tok = processor.tokenizer
    # The response ending in a literal <|im_end|> is left out: decoding the ids drops EOS (tested below).
    gres = [response for response, _, _ in GRES_TOTALS if "<|im_end|>" not in response]
    texts = gres + [prediction for prediction, _ in GCG_TABLE]
    solutions = [gres_gt("A")] * len(gres) + [GCG_GT] * len(GCG_TABLE)
    # Completion ids as generation leaves them: EOS, then right padding.
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id] for t in texts]
    trl_text = tok.batch_decode(ids, skip_special_tokens=True)  # what TRL hands over: grounding markers gone
    assert REF_START not in "".join(trl_text) and A in "".join(trl_text)
    assert tok.convert_tokens_to_ids(A.replace("><", ">\n<").split()) == tok(A, add_special_tokens=False)["input_ids"]
    for name, f in REWARDS.items():
        if name == "mask_iou_reward":
            continue
        bound = bind_tokenizer(f, processor)
        assert bound.__name__ == name
        expected = f(None, texts, solution=solutions)
        assert bound(None, trl_text, completion_ids=ids, solution=solutions) == expected, name
        assert bound(None, None, completion_ids=ids, solution=solutions) == expected, name  # ids only
        conversational = [[{"role": "assistant", "content": t}] for t in trl_text]
        assert bound(None, conversational, completion_ids=ids, solution=solutions) == expected, name
        assert pickle.loads(pickle.dumps(bound))(None, trl_text, completion_ids=ids, solution=solutions) == expected
    # Unbound GCG rewards score TRL's text, which has lost the phrase markers.
    gcg_text = trl_text[len(gres)]
    assert rewards.gcg_mask_reward(None, [gcg_text], completion_ids=[ids[len(gres)]], solution=[GCG_GT]) == [0.0]
    # A kept EOS zeroes the full-match format rule on text (the rule is a full match); decoded ids drop it.
    with_eos = [tok(f"<think>t</think><answer>{A}</answer><|im_end|>", add_special_tokens=False)["input_ids"]]
    assert bind_tokenizer(rewards.format_reward, processor)(None, ["x"], completion_ids=with_eos) == [1.0]


def test_bound_rewards_decode_a_step_once(processor, monkeypatch):
    tok = processor.tokenizer
    calls = []
    real = type(tok).batch_decode
    monkeypatch.setattr(tok, "batch_decode", lambda *a, **k: calls.append(1) or real(tok, *a, **k))
    ids = [tok(f"<think>t</think><answer>{A}</answer>", add_special_tokens=False)["input_ids"]]
    bound = [bind_tokenizer(REWARDS[name], processor) for name in PRESETS["gres"]]
    scores = [f(None, None, completion_ids=ids, solution=[gres_gt("A")]) for f in bound]
    assert scores == [[1.0]] * 4 and len(calls) == 1  # one decode for the four rewards of the step
    ids.append(list(ids[0]))  # the same list object with other items: decoded again, not served stale
    assert bound[1](None, None, completion_ids=ids, solution=[gres_gt("A")] * 2) == [1.0, 1.0] and len(calls) == 2
    assert bound[1](None, None, completion_ids=[list(ids[0])], solution=["No target."]) == [0.0] and len(calls) == 3


def test_bind_tokenizer_from_folder(tmp_path, processor):
    processor.tokenizer.save_pretrained(tmp_path)
    tok = processor.tokenizer
    text = f"{ref('white pumpkin')}{A} and {ref('a jute bag')}{B}<|im_end|>"
    ids = [tok(text, add_special_tokens=False)["input_ids"]]
    bound = bind_tokenizer(bind_tokenizer(rewards.gcg_phrase_reward, processor), str(tmp_path))
    assert bound.reward is rewards.gcg_phrase_reward
    assert bound(None, ["lost"], completion_ids=ids, solution=[GCG_GT]) == [1.0]


# ---------------------------------------------------------------------------------------------------------------------
# Pixel IoU on the golden micro mask tokenizer
# ---------------------------------------------------------------------------------------------------------------------

def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def test_mask_iou_reward_on_micro_tokenizer(tmp_path, golden_a):
    GOLDEN = golden_a  # noqa: N806
    from PIL import Image

    reward = rewards.get_mask_iou_reward(
        sam2_config=GOLDEN / "sam2_micro.yaml", checkpoint=GOLDEN / "state_dict.safetensors", device="cpu"
    )
    reward = pickle.loads(pickle.dumps(reward))  # lazily loaded: pickles before and after use
    image = np.load(GOLDEN / "inputs.npz")["image"]  # (400, 600, 3) uint8
    expected = np.load(GOLDEN / "expected.npz")
    codes, masks = expected["decode_codes"], expected["decode_masks"]  # reference decodes of 6 code pairs
    # As in the reference RL data, the GT masks are the tokenizer's own reconstructions of the GT codes.
    gt = [_rle(masks[0]), _rle(masks[3])]
    own = f"<think>t</think><answer>{format_mask(*codes[3])}{format_mask(*codes[0])}</answer>"
    other = f"<think>t</think><answer>{format_mask(*codes[1])}{format_mask(*codes[4])}</answer>"
    half = f"<think>t</think><answer>{format_mask(*codes[0])}</answer>"
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    flipped = Image.fromarray(np.ascontiguousarray(image[::-1]))
    completions = [own, other, half, own, "<answer>No target.</answer>", own]
    gt_masks = [gt, gt, gt, gt, [], None]
    images = [Image.fromarray(image), Image.fromarray(image), str(path), flipped, flipped, flipped]
    scores = reward(None, completions, gt_masks=gt_masks, image=images)
    tokenizer = reward.tokenizer()
    assert tokenizer.encoder_passes == 2  # two distinct images (PIL and path of the same pixels count once)
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores[0] > scores[1] and scores[0] > scores[3]
    assert scores[2] == pytest.approx(0.5, abs=1e-6)
    assert scores[4:] == [1.0, None]
    tokenizer.clear_cache()
    assert reward(None, [other], gt_masks=[None]) == [None]
    assert reward(None, [other]) == [None]


def test_gcg_phrases_split_on_single_spaces_as_the_reference():
    """CycleGRPO splits phrases on " " only: a tab or a non-breaking space joins two words into one."""
    gt = f"{ref('a man')}{A}"
    for sep, expected in ((" ", 1.0), ("  ", 1.0), ("\t", 0.0), ("\u00a0", 0.0)):
        assert rewards.gcg_phrase_reward(None, [f"{ref(f'A{sep}man')}{A}"], solution=[gt]) == [expected], repr(sep)


def test_gcg_phrase_words_are_stripped_as_the_reference():
    """CycleGRPO strips each space-separated piece (`str.strip`): whitespace at a word's edge is dropped, whitespace
    inside a word stays. The literal completion is the phrase `\\x0ccat a` with its mask against GT phrases
    `cat a` and `dog`: one of two GT phrases found."""
    gt = (
        "<|object_ref_start|> cat a <|object_ref_end|> <|mt_start|><|mt_0123|><|mt_0301|><|mt_end|> and "
        "<|object_ref_start|> dog <|object_ref_end|> <|mt_start|><|mt_0007|><|mt_0400|><|mt_end|>."
    )
    pred = "A <|object_ref_start|> \x0ccat a <|object_ref_end|> <|mt_start|><|mt_0123|><|mt_0301|><|mt_end|>."
    assert rewards.gcg_phrase_reward(None, [pred], solution=[gt]) == [0.5]  # 0.0 before the strip
    assert rewards.gcg_grounded_reward(None, [pred], solution=[gt]) == [0.5]  # the grounded reward keys alike


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("\x0ccat a", 1.0),  # form feed at a word's edge
        ("Cat\t A", 1.0),  # "Cat\t" is stripped to "Cat"
        ("\tcat  a\t", 1.0),
        ("\xa0cat a\xa0", 1.0),  # NBSP
        ("cat\u3000 \u3000a", 1.0),  # ideographic space
        ("cat \x0b\x1c\u2028\r a", 1.0),  # a piece of only whitespace is dropped
        ("cat\ta", 0.0),  # inside a piece: "cat\ta" is one word
        ("cat\xa0a", 0.0),
        ("cat\u3000a", 0.0),
        ("cat\u200ba", 0.0),  # a zero-width space is not whitespace to str.strip
    ],
)
def test_gcg_phrase_whitespace(phrase, expected):
    gt = f"{ref('cat a')}{A}"
    assert rewards.gcg_phrase_reward(None, [f"{ref(phrase)}{A}"], solution=[gt]) == [expected]


def test_gcg_whitespace_only_phrase_is_no_phrase():
    """A phrase of only whitespace is empty (the pair grammar's `\\s*` before the end marker takes all of it, and its
    key would be "" anyway): the pair still gives a mask key, but no phrase (as in CycleGRPO)."""
    blank = ref(" \t\x0c\xa0\u3000 ")
    assert rewards.gcg_phrase_reward(None, [f"{blank}{A}"], solution=[f"{ref('cat')}{A}"]) == [0.0]
    assert rewards.gcg_mask_reward(None, [f"{blank}{A}"], solution=[f"{ref('cat')}{A}"]) == [1.0]
    # A GT whose only phrase is blank has no phrases: any prediction's phrase part is 1.0.
    assert rewards.gcg_phrase_reward(None, [f"{ref('dog')}{B}", "x"], solution=[f"{blank}{A}"] * 2) == [1.0, 1.0]
