"""samtok_rl.metrics: GRES (ReLA accounting) and GCG (GLaMM evaluator), checked against hand-computed numbers."""

import json
import logging
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samtok_rl.metrics import (
    GCG_COLUMNS,
    GRES_COLUMNS,
    BertTextSimilarity,
    caption_metrics,
    format_table,
    gcg_metrics,
    greedy_miou,
    greedy_recall_matches,
    gres_metrics,
    java_available,
    union_masks,
)


SHAPE = (10, 10)


def rect(y0, y1, x0, x1, shape=SHAPE):
    """(H, W) bool mask, True on rows [y0, y1) and columns [x0, x1)."""
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


EMPTY = np.zeros(SHAPE, dtype=bool)


def exact_text(labels, phrases):
    """Text similarity stub: 1 for identical strings, else 0 (stands in for BERT)."""
    return np.array([[float(a == b) for b in phrases] for a in labels])


def pred(phrases, masks, caption="a caption"):
    return {"caption": caption, "phrases": phrases, "masks": masks}


def ref(labels, masks, caption="a caption", **extra):
    return {"caption": caption, "labels": labels, "masks": masks, **extra}


# ---------------------------------------------------------------------------------------------------------------
# GRES
# ---------------------------------------------------------------------------------------------------------------


def test_gres_no_target_hit():
    m = gres_metrics([EMPTY], [EMPTY])
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (1, 0, 0, 0)
    assert m["gIoU"] == 100.0
    assert m["N_acc"] == 100.0
    # ΣU = 0 and no target sample: both ratios are undefined, reported as nan (documented choice).
    assert math.isnan(m["cIoU"]) and math.isnan(m["T_acc"]) and math.isnan(m["Pr@0.7"])


def test_gres_no_target_miss_adds_false_positive_area_to_ciou_union():
    # Sample 0: no target, 3 px hallucinated. Sample 1: 16 px target predicted exactly.
    preds = [rect(0, 1, 0, 3), rect(4, 8, 4, 8)]
    gts = [EMPTY, rect(4, 8, 4, 8)]
    m = gres_metrics(preds, gts)
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (0, 1, 0, 1)
    assert m["gIoU"] == pytest.approx(100 * (0 + 1) / 2)
    assert (m["sum_I"], m["sum_U"]) == (16, 3 + 16)
    assert m["cIoU"] == pytest.approx(100 * 16 / 19)
    assert m["N_acc"] == 0.0 and m["T_acc"] == 100.0


def test_gres_target_rejected():
    m = gres_metrics([EMPTY], [rect(0, 2, 0, 2)])
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (0, 0, 1, 0)
    assert m["gIoU"] == 0.0
    assert (m["sum_I"], m["sum_U"]) == (0, 4)  # the target's area still enters ΣU
    assert m["cIoU"] == 0.0
    assert m["T_acc"] == 0.0
    assert math.isnan(m["N_acc"])  # no no-target sample in this split


def test_gres_all_branches_exact_numbers():
    gt_t = rect(0, 2, 0, 2)  # 4 px target
    preds = [
        EMPTY,  # no target, empty            -> TP, IoU 1
        rect(5, 6, 5, 8),  # no target, 3 px  -> FN, IoU 0, U 3
        EMPTY,  # target rejected             -> FP, IoU 0, U 4
        rect(0, 1, 0, 4),  # 2 px in, 2 out  -> TN, I 2, U 6, IoU 1/3
        gt_t,  # exact                        -> TN, I 4, U 4, IoU 1
    ]
    gts = [EMPTY, EMPTY, gt_t, gt_t, gt_t]
    m = gres_metrics(preds, gts)
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (1, 1, 1, 2)
    assert m["gIoU"] == pytest.approx(100 * (1 + 0 + 0 + 1 / 3 + 1) / 5)  # 46.67
    assert (m["sum_I"], m["sum_U"]) == (6, 17)
    assert m["cIoU"] == pytest.approx(100 * 6 / 17)  # 35.29
    assert m["N_acc"] == pytest.approx(50.0)
    assert m["T_acc"] == pytest.approx(100 * 2 / 3)
    # Pr@t over the 3 target samples, IoUs (0, 1/3, 1).
    for key in ("Pr@0.7", "Pr@0.8", "Pr@0.9"):
        assert m[key] == pytest.approx(100 / 3)
    assert (m["num_samples"], m["num_no_target"]) == (5, 2)


def test_union_masks_multi_mask_and_empty():
    a, b = rect(0, 2, 0, 4), rect(1, 3, 2, 6)  # 8 px + 8 px, 2 px overlap
    u = union_masks([a, b], SHAPE)
    assert u.dtype == bool and u.sum() == 14
    # Two decoded masks of one answer score against the GT as their union.
    m = gres_metrics([u], [rect(0, 3, 0, 6)])  # GT 18 px contains the union
    assert m["gIoU"] == pytest.approx(100 * 14 / 18)
    # No span decoded: the empty union is the no-target answer.
    empty = union_masks([], SHAPE)
    assert empty.shape == SHAPE and not empty.any()
    assert gres_metrics([empty], [EMPTY])["TP"] == 1
    # 0/1 uint8 masks are accepted.
    assert union_masks([a.astype(np.uint8)], SHAPE).sum() == 8


def test_gres_errors_name_the_sample():
    with pytest.raises(ValueError, match="sample 1"):
        gres_metrics([EMPTY, EMPTY], [EMPTY, np.zeros((5, 5), bool)])
    with pytest.raises(ValueError, match="2 predictions but 1 ground truths"):
        gres_metrics([EMPTY, EMPTY], [EMPTY])
    with pytest.raises(ValueError, match="mask 1"):
        union_masks([EMPTY, np.zeros((2, 2), bool)], SHAPE)


# ---------------------------------------------------------------------------------------------------------------
# GCG: mIoU, Recall, pairing
# ---------------------------------------------------------------------------------------------------------------


def test_greedy_miou_is_greedy_not_hungarian():
    assert greedy_miou(np.array([[0.9, 0.8], [0.8, 0.1]])) == pytest.approx(0.5)
    assert greedy_miou(np.zeros((2, 3))) == 0.0
    assert greedy_miou(np.zeros((0, 3))) == 0.0


def test_gcg_miou_greedy_with_extra_predictions(no_java):
    g0, g1 = rect(0, 2, 0, 10), rect(5, 10, 0, 2)  # 20 px, 10 px
    image1 = pred(
        ["p0", "p1", "p2"],
        [rect(0, 2, 0, 5), g1, rect(8, 10, 8, 10)],  # IoU 0.5 with g0; exact g1; extra, overlaps nothing
    )
    image2 = pred(["p0"], [rect(6, 8, 6, 8)])  # no overlap -> the image scores 0
    refs = [ref(["g0", "g1"], [g0, g1]), ref(["g0"], [rect(0, 5, 0, 5)])]
    m = gcg_metrics([image1, image2], refs, text_similarity=exact_text)
    # Image 1: pairs 1.0 then 0.5, the extra mask is not penalised -> 0.75. Image 2: 0. Mean 0.375.
    assert m["mIoU"] == pytest.approx(37.5)


MAN, DOG = rect(0, 4, 0, 4), rect(6, 10, 6, 10)  # 16 px each
MAN_75, DOG_75 = rect(0, 4, 0, 3), rect(6, 10, 6, 9)  # 12 px inside, IoU 0.75


def test_gcg_recall_stop_rule_ends_the_whole_image(no_java):
    refs = [ref(["man", "dog"], [MAN, DOG]), ref(["man", "dog"], [MAN, DOG])]
    preds = [
        # The best pair (IoU 1) has mismatched text: matching stops, so the passing dog pair is never counted.
        pred(["cat", "dog"], [MAN, DOG_75]),
        pred(["man", "dog"], [MAN, DOG_75]),
    ]
    m = gcg_metrics(preds, refs, text_similarity=exact_text)
    assert (m["TP"], m["num_labels"]) == (0 + 2, 4)
    assert m["Recall"] == pytest.approx(50.0)
    # The same rule on matrices: IoU below 0.5 stops too, even with matching text.
    assert greedy_recall_matches(np.array([[0.9, 0.0], [0.0, 0.8]]), np.array([[0.4, 0.0], [0.0, 1.0]])) == 0
    assert greedy_recall_matches(np.array([[0.9, 0.0], [0.0, 0.4]]), np.eye(2)) == 1


def test_gcg_masks_pair_with_phrases_by_position(no_java):
    refs = [ref(["man", "dog"], [MAN, DOG])] * 2
    preds = [pred(["man", "dog"], [MAN, DOG]), pred(["dog", "man"], [MAN, DOG])]  # second: masks out of order
    m = gcg_metrics(preds, refs, text_similarity=exact_text)
    assert m["TP"] == 2  # only the first image's pairs count
    assert m["mIoU"] == pytest.approx(100.0)  # mIoU ignores text


def test_gcg_mask_phrase_count_mismatch_follows_the_reference(no_java):
    refs = [ref(["man", "dog"], [MAN, DOG])] * 4
    preds = [
        # 3 masks, 2 phrases, and the best pair is mask 2 (no phrase): the reference's IndexError -> 0 TP.
        pred(["man", "dog"], [MAN_75, DOG_75, MAN]),
        # 3 masks, 2 phrases, mask 2 overlaps nothing: the loop stops on IoU first, pairs count.
        pred(["man", "dog"], [MAN, DOG, rect(0, 1, 9, 10)]),
        # 3 phrases, 2 masks: pairs normally.
        pred(["man", "dog", "sky"], [MAN, DOG]),
        # Masks but no phrases: the first admissible pair has no phrase -> 0 TP.
        pred([], [MAN]),
    ]
    m = gcg_metrics(preds, refs, text_similarity=exact_text)
    assert m["TP"] == 0 + 2 + 2 + 0
    assert m["num_labels"] == 8  # failed images still count their labels
    assert (m["num_mismatched"], m["num_failed_pairing"]) == (4, 2)
    assert m["Recall"] == pytest.approx(50.0)
    # mIoU uses every mask: image 0 pairs (MAN, 1.0) then (DOG_75, 0.75); image 3 pairs (MAN, 1.0) only.
    assert m["mIoU"] == pytest.approx(100 * (0.875 + 1.0 + 1.0 + 1.0) / 4)


def test_gcg_text_similarity_called_only_where_the_reference_reads_it(no_java):
    calls = []

    def spy(labels, phrases):
        calls.append((list(labels), list(phrases)))
        return exact_text(labels, phrases)

    refs = [ref(["man"], [MAN]), ref(["dog"], [DOG])]
    preds = [pred(["a man"], [MAN]), pred(["dog"], [rect(0, 1, 0, 1)])]  # image 1 has no IoU >= 0.5
    gcg_metrics(preds, refs, text_similarity=spy)
    assert calls == [(["man"], ["a man"])]


def test_gcg_input_errors(no_java):
    with pytest.raises(ValueError, match=r"image 0 .*different sizes"):
        gcg_metrics([pred(["x"], [np.zeros((4, 4), bool)])], [ref(["x"], [MAN])], text_similarity=exact_text)
    with pytest.raises(ValueError, match="reference 0 .* 1 labels but 2 masks"):
        gcg_metrics([pred([], [])], [ref(["x"], [MAN, DOG])], text_similarity=exact_text)
    with pytest.raises(ValueError, match="text_similarity returned shape"):
        gcg_metrics([pred(["x"], [MAN])], [ref(["x"], [MAN])], text_similarity=lambda a, b: np.ones((3, 3)))


# ---------------------------------------------------------------------------------------------------------------
# GCG: AP50
# ---------------------------------------------------------------------------------------------------------------


def test_gcg_ap50_hand_computed(no_java):
    refs = [ref(["man"], [MAN])]
    fp = rect(6, 10, 0, 3)
    # All scores are 1.0, so the input order is the ranking: a false positive ranked first halves the precision.
    assert gcg_metrics([pred(["man", "x"], [MAN, fp])], refs, exact_text)["AP50"] == pytest.approx(100.0)
    assert gcg_metrics([pred(["x", "man"], [fp, MAN])], refs, exact_text)["AP50"] == pytest.approx(50.0)
    assert gcg_metrics([pred([], [])], refs, exact_text)["AP50"] == 0.0  # no detections at all


def test_gcg_ap50_ranks_images_by_sorted_image_id(no_java):
    # Image "b" has a true positive, image "a" a false positive, given in the order [b, a]. COCOeval ranks tied
    # scores in sorted image-id order, so the ids change AP: 51 of the 101 recall points are reachable.
    preds = [pred(["man"], [MAN]), pred(["man"], [rect(6, 10, 0, 3)])]
    refs = [ref(["man"], [MAN]), ref(["man"], [MAN])]
    by_index = gcg_metrics(preds, refs, exact_text)["AP50"]  # ids 0 (b), 1 (a): TP ranked first
    refs_ids = [dict(refs[0], image_id="b"), dict(refs[1], image_id="a")]
    by_stem = gcg_metrics(preds, refs_ids, exact_text)["AP50"]  # "a" sorts first: FP ranked first
    assert by_index == pytest.approx(100 * 51 / 101)
    assert by_stem == pytest.approx(100 * 0.5 * 51 / 101)


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")  # as in the GranD-f JSON files
    return rle


def test_gcg_ap50_matches_pycocotools_cocoeval_directly(tmp_path, no_java):
    # A GranD-f-shaped fixture: string image stems, RLE masks with str counts, mixed hits, misses and extras.
    stems = ["sa_3", "sa_1", "sa_2"]
    gt_masks = [[MAN, DOG], [rect(0, 10, 0, 5)], [rect(2, 6, 2, 6), rect(0, 2, 0, 10), rect(7, 10, 0, 10)]]
    pred_masks = [
        [MAN_75, rect(0, 3, 5, 10), DOG],
        [rect(0, 10, 0, 3)],
        [rect(2, 6, 2, 5), rect(7, 10, 0, 4), rect(5, 10, 5, 10), rect(0, 2, 0, 10)],
    ]
    refs = [ref([f"l{k}" for k in range(len(g))], [_rle(m) for m in g], image_id=s) for s, g in zip(stems, gt_masks)]
    preds = [pred([f"l{k}" for k in range(len(p))], [_rle(m) for m in p]) for p in pred_masks]
    ours = gcg_metrics(preds, refs, exact_text)["AP50"]

    # The reference's path: COCO JSON files on disk, loadRes, COCOeval segm on category 1, stats[1].
    gt_json = {
        "images": [{"id": s, "height": 10, "width": 10} for s in stems],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [],
    }
    for s, g in zip(stems, gt_masks):
        for m in g:
            rle = _rle(m)
            gt_json["annotations"].append(
                {
                    "id": len(gt_json["annotations"]) + 1,
                    "image_id": s,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    dt_json = [
        {"image_id": s, "category_id": 1, "segmentation": _rle(m), "score": 1.0}
        for s, p in zip(stems, pred_masks)
        for m in p
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "dt.json").write_text(json.dumps(dt_json))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dt.json")), "segm")
    coco_eval.params.catIds = [1]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert 0 < coco_eval.stats[1] < 1  # a non-trivial fixture
    assert ours == pytest.approx(100 * coco_eval.stats[1])


# ---------------------------------------------------------------------------------------------------------------
# GCG: captions
# ---------------------------------------------------------------------------------------------------------------

CAPTION_PREDS = ["A man riding a horse.", "Two dogs play in the park!", "a red car"]
CAPTION_REFS = ["A man rides a brown horse.", "Dogs playing in a park, happily.", "The red car is parked."]


def _caption_pairs():
    return (
        [pred([], [], caption=c) for c in CAPTION_PREDS],
        [ref([], [], caption=c) for c in CAPTION_REFS],
    )


def test_gcg_cider_fallback_without_java(no_java, caplog):
    from pycocoevalcap.cider.cider import Cider

    preds, refs = _caption_pairs()
    with caplog.at_level(logging.WARNING, logger="samtok_rl.metrics.gcg"):
        m = gcg_metrics(preds, refs, exact_text)
    assert m["METEOR"] is None
    assert "Java is missing" in caplog.text
    # The fallback tokenisation, written out by hand: lower-case, punctuation dropped.
    res = {0: ["a man riding a horse"], 1: ["two dogs play in the park"], 2: ["a red car"]}
    gts = {0: ["a man rides a brown horse"], 1: ["dogs playing in a park happily"], 2: ["the red car is parked"]}
    expected, _ = Cider().compute_score(gts, res)
    assert m["CIDEr"] == pytest.approx(100 * expected)


requires_java = pytest.mark.skipif(
    not java_available(), reason="no `java` on PATH: PTBTokenizer and METEOR need a JRE"
)


@requires_java
def test_caption_metrics_cider_matches_pycocoevalcap_with_ptb_tokenizer():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = caption_metrics(CAPTION_PREDS, CAPTION_REFS, meteor=False)
    assert ours["METEOR"] is None
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTION_REFS)})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTION_PREDS)})
    assert res[1] == ["two dogs play in the park"]  # lower-cased, punctuation dropped
    expected, _ = Cider().compute_score(gts, res)
    assert ours["CIDEr"] == pytest.approx(100 * expected)


@requires_java
@pytest.mark.slow  # METEOR's JVM loads its paraphrase tables: 12 s idle, ~30 s on a busy 2-core machine
def test_gcg_meteor_with_java():
    preds, refs = _caption_pairs()
    m = gcg_metrics(preds, refs, exact_text)
    # Golden value from pycocoevalcap 1.2's meteor-1.5.jar on the PTB-tokenised captions of this fixture.
    assert m["METEOR"] == pytest.approx(31.641306996574826, abs=1e-6)
    assert m["CIDEr"] == pytest.approx(caption_metrics(CAPTION_PREDS, CAPTION_REFS, meteor=False)["CIDEr"])


# ---------------------------------------------------------------------------------------------------------------
# Text similarity (tiny offline BERT)
# ---------------------------------------------------------------------------------------------------------------


def test_bert_text_similarity_is_mean_pooled_cosine(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    sim = BertTextSimilarity(tiny_bert)
    labels, phrases = ["a red box", "the sky", "a dog"], ["red box", "a dog"]
    out = sim(labels, phrases)
    assert out.shape == (3, 2)
    assert out[2, 1] == pytest.approx(1.0)  # identical strings

    # By hand: mean of the last hidden state over every position, [CLS] and [SEP] included, then cosine.
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    ids = tokenizer("a red box", return_tensors="pt")["input_ids"][0].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id

    def emb(text):
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0).double().numpy()

    a, b = emb("a red box"), emb("red box")
    assert out[0, 0] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-6)


def test_bert_text_similarity_truncates_and_handles_empty(tiny_bert):
    sim = BertTextSimilarity(tiny_bert)
    long_text = " ".join(["dog"] * 600)  # > 512 tokens: truncated, not an error
    assert sim([long_text], ["dog"]).shape == (1, 1)
    assert sim(["dog"], []).shape == (1, 0)


def test_gcg_recall_with_tiny_bert(tiny_bert, no_java):
    m = gcg_metrics(
        [pred(["man", "dog"], [MAN, DOG])], [ref(["man", "dog"], [MAN, DOG])], BertTextSimilarity(tiny_bert)
    )
    assert m["Recall"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def test_format_table_gres_and_gcg():
    rows = {"val": {"gIoU": 79.4, "cIoU": 73.7, "N_acc": 81.5}, "testB": {"gIoU": 71.3, "cIoU": 69.8, "N_acc": 72.0}}
    assert format_table(rows, GRES_COLUMNS, average=True) == (
        "split   gIoU   cIoU  N-acc\n"
        "val    79.40  73.70  81.50\n"
        "testB  71.30  69.80  72.00\n"
        "avg    75.35  71.75  76.75"
    )
    table = format_table({"val": {"METEOR": None, "CIDEr": 52.5, "AP50": 41.5, "mIoU": 73.5}}, GCG_COLUMNS)
    assert table.splitlines()[1].split() == ["val", "-", "52.50", "41.50", "73.50", "-"]
    assert format_table({"val": {"N_acc": float("nan")}}, ["N_acc"]).splitlines()[1].split() == ["val", "-"]
