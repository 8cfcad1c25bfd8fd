"""GCG (GranD-f) metrics, reproducing the GLaMM evaluator that Sa2VA and SAMTok use unchanged.

Reference: mbzuai-oryx/groundingLMM `eval/gcg/evaluate.py` (the GLaMM GCG evaluator). Masks go through
pycocotools (RLE, IoU, COCOeval) and captions through pycocoevalcap, exactly as there. The differences are listed in
[`gcg_metrics`]'s docstring.
"""

import contextlib
import io
import logging
import re
import shutil
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samtok_rl.masks import coco_rle, rle_from_mask

from .text_similarity import BertTextSimilarity


logger = logging.getLogger(__name__)

# The GLaMM evaluator's Recall thresholds.
IOU_THRESHOLD = 0.5
TEXT_SIM_THRESHOLD = 0.5

TextSimilarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]


class _PairingError(Exception):
    """The reference's Recall loop indexed a phrase that does not exist (more masks than phrases)."""


def java_available() -> bool:
    """Whether `java` is on PATH. METEOR and PTBTokenizer (pycocoevalcap) run Java subprocesses."""
    return shutil.which("java") is not None


def simple_tokenize(caption: str) -> str:
    """Fallback caption tokenisation, used for CIDEr only when Java is missing.

    It approximates the reference's PTBTokenizer + punctuation removal: lower-case words and numbers joined by one
    space, every other symbol dropped. It does not split clitics ("don't" stays one token, PTB gives "do n't") and
    drops symbols PTB keeps (e.g. "&"), so CIDEr can differ slightly from the reference number; a warning is logged
    whenever it is used.

    Example:

    >>> simple_tokenize("A man, riding a horse.")
    'a man riding a horse'

    """
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", caption.lower()))


def _to_rle(mask: Any, where: str) -> dict:
    """(H, W) array or compressed COCO RLE -> compressed RLE (pycocotools)."""
    if isinstance(mask, dict):
        if "size" not in mask or "counts" not in mask:
            raise ValueError(f"gcg_metrics: {where}: an RLE mask needs 'size' and 'counts', got keys {sorted(mask)}")
        return mask
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"gcg_metrics: {where}: expected an (H, W) mask, got shape {arr.shape}")
    return coco_rle(rle_from_mask(arr))


def iou_matrix(rows: list[dict], cols: list[dict]) -> np.ndarray:
    """IoU of every row mask against every column mask, [len(rows), len(cols)], via pycocotools."""
    if not rows or not cols:
        return np.zeros((len(rows), len(cols)))
    ious = np.asarray(mask_utils.iou(rows, cols, [0] * len(cols)), dtype=np.float64).reshape(len(rows), len(cols))
    # Two empty masks have union 0. The reference divides 0/0 (nan, which stops its mIoU loop); score 0 instead.
    # GranD-f ground-truth masks are never empty, so this does not change benchmark numbers.
    empty_rows = mask_utils.area(rows) == 0
    empty_cols = mask_utils.area(cols) == 0
    ious[np.outer(empty_rows, empty_cols)] = 0.0
    return ious


def greedy_pairs(ious: np.ndarray) -> list[tuple[int, int, float]]:
    """The reference's mIoU pairing: repeatedly take the global maximum while it is > 0, then drop its row and column.

    Returns `(row, column, iou)` per pair, in the order taken, with indices into the original `ious`.

    Example:

    >>> greedy_pairs(np.array([[0.9, 0.8], [0.8, 0.1]]))
    [(0, 0, 0.9), (1, 1, 0.1)]

    """
    ious = np.array(ious, dtype=np.float64)
    rows, cols = list(range(ious.shape[0])), list(range(ious.shape[1]))
    pairs = []
    while ious.size > 0 and ious.max() > 0:
        r, c = np.unravel_index(np.argmax(ious), ious.shape)
        pairs.append((rows.pop(r), cols.pop(c), float(ious[r, c])))
        ious = np.delete(np.delete(ious, r, axis=0), c, axis=1)
    return pairs


def greedy_miou(ious: np.ndarray) -> float:
    """The reference's per-image mIoU: the mean IoU of [`greedy_pairs`]; 0 if nothing pairs.

    `ious` is [#pred, #GT] (the orientation does not change the result). Unpaired masks are not penalised.

    Example:

    >>> greedy_miou(np.array([[0.9, 0.8], [0.8, 0.1]]))  # greedy, not Hungarian (which would give 0.8)
    0.5

    """
    paired = [iou for _, _, iou in greedy_pairs(ious)]
    return float(np.mean(paired)) if paired else 0.0


def greedy_recall_matches(ious: np.ndarray, text_sims: np.ndarray) -> int:
    """The reference's per-image true positives for Recall.

    `ious` is [#GT masks, #pred masks] and `text_sims` is [#GT labels, #pred phrases]. Take the global max-IoU pair;
    stop if its IoU < 0.5 or its text similarity < 0.5 (so a high-IoU pair with the wrong text ends matching for the
    whole image); otherwise count it and zero its row and column in both matrices.

    Raises `_PairingError` where the reference raises IndexError: the chosen mask has no phrase at its index (more
    masks than phrases). The caller then scores the image 0 TP, as the reference's `except` does.
    """
    ious = np.array(ious, dtype=np.float64)
    sims = np.array(text_sims, dtype=np.float64)
    matches = 0
    while ious.size > 0:
        r, c = np.unravel_index(np.argmax(ious), ious.shape)
        # The IoU test comes first and short-circuits, as in the reference: a mask without a phrase only fails
        # the image once its pair is the best remaining one with IoU >= 0.5.
        if ious[r, c] < IOU_THRESHOLD:
            break
        if r >= sims.shape[0] or c >= sims.shape[1]:
            raise _PairingError(f"mask pair (gt {r}, pred {c}) has no text-similarity entry, shape {sims.shape}")
        if sims[r, c] < TEXT_SIM_THRESHOLD:
            break
        matches += 1
        ious[r, :] = 0
        ious[:, c] = 0
        sims[r, :] = 0
        sims[:, c] = 0
    return matches


def _ap50(image_ids: list[Hashable], gt_rles: list[list[dict]], pred_rles: list[list[dict]]) -> float:
    """COCOeval `segm` AP at IoU 0.50 (stats[1]), every prediction category 1 with score 1.0, as the reference."""
    gt_anns = []
    for iid, rles in zip(image_ids, gt_rles):
        for rle in rles:
            gt_anns.append(
                {
                    # COCOeval treats id 0 as "unmatched", so ids start at 1.
                    "id": len(gt_anns) + 1,
                    "image_id": iid,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    dt_anns = [
        {"image_id": iid, "category_id": 1, "segmentation": rle, "score": 1.0}
        for iid, rles in zip(image_ids, pred_rles)
        for rle in rles
    ]
    if not dt_anns:
        # The reference crashes in loadRes on an empty list; no detections means AP 0.
        return 0.0
    images = []
    for iid, g, p in zip(image_ids, gt_rles, pred_rles):
        # COCO.annToRLE reads the image size even when the mask already is RLE; an image without masks is never read.
        h, w = (g + p)[0]["size"] if g + p else (1, 1)
        images.append({"id": iid, "height": h, "width": w})
    log = io.StringIO()
    # pycocotools prints progress and the summary table; keep it out of the runner's output (logged at debug).
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.catIds = [1]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("COCOeval segm summary:\n%s", log.getvalue())
    ap50 = float(evaluator.stats[1])
    # COCOeval reports -1 when there is no ground truth at all.
    return 100.0 * ap50 if ap50 >= 0 else float("nan")


def caption_metrics(
    pred_captions: Sequence[str], ref_captions: Sequence[str], *, meteor: bool = True
) -> dict[str, float | None]:
    """METEOR and CIDEr in percent, via pycocoevalcap with one reference caption per image, as `COCOEvalCap`.

    Both sides are PTB-tokenised (Java) and scored with `Meteor` and `Cider`; SPICE is never run (it downloads
    Stanford models). Without `java` on PATH, METEOR is None and CIDEr is computed on [`simple_tokenize`]d
    captions, with a logged warning: PTB splits contractions (`it's` -> `it 's`) and keeps `&` as a token, the
    fallback does neither, so CIDEr then differs from the reference's by up to 6.7% on captions with contractions or
    `&` (measured on GranD-f-like captions); install Java for the paper's numbers.

    Args:
        pred_captions (`Sequence[str]`):
            One predicted caption per image.
        ref_captions (`Sequence[str]`):
            One reference caption per image, aligned with `pred_captions`.
        meteor (`bool`, *optional*, defaults to `True`):
            Run METEOR. Its JVM loads paraphrase tables for 10-30 s per call; `False` reports None and skips it
            (e.g. for quick evaluations during training).

    Returns:
        `dict`: `METEOR` (`float` or None) and `CIDEr` (`float`), both ×100 (unrounded).
    """
    from pycocoevalcap.cider.cider import Cider

    if len(pred_captions) != len(ref_captions):
        raise ValueError(f"caption_metrics: {len(pred_captions)} predictions but {len(ref_captions)} references")
    gts = {i: [{"caption": c}] for i, c in enumerate(ref_captions)}
    res = {i: [{"caption": c}] for i, c in enumerate(pred_captions)}
    meteor_score = None
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # COCOEvalCap's path: PTB-tokenise both sides, then score.
        tokenizer = PTBTokenizer()
        gts_tok = tokenizer.tokenize(gts)
        res_tok = tokenizer.tokenize(res)
        if meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()  # starts the METEOR JVM
            try:
                meteor_score, _ = scorer.compute_score(gts_tok, res_tok)
            finally:
                # Meteor has no close(); its __del__ takes a lock that compute_score leaves held if it raises (e.g.
                # the JVM died), which would hang garbage collection. Stop the JVM here and free the lock.
                scorer.meteor_p.kill()
                scorer.meteor_p.wait()
                if scorer.lock.locked():
                    scorer.lock.release()
            meteor_score = 100.0 * float(meteor_score)
    else:
        logger.warning(
            "Java is missing (no `java` on PATH): METEOR is reported as None, and CIDEr uses the simple fallback "
            "tokenisation instead of PTBTokenizer (up to 6.7% off the reference on captions with contractions or '&'). "
            "Install a JRE "
            "(e.g. `apt-get install default-jre-headless`) for the reference caption metrics."
        )
        gts_tok = {i: [simple_tokenize(c["caption"]) for c in caps] for i, caps in gts.items()}
        res_tok = {i: [simple_tokenize(c["caption"]) for c in caps] for i, caps in res.items()}
    cider, _ = Cider().compute_score(gts_tok, res_tok)
    return {"METEOR": meteor_score, "CIDEr": 100.0 * float(cider)}


def gcg_metrics(
    predictions: Sequence[dict],
    references: Sequence[dict],
    text_similarity: TextSimilarity | None = None,
    *,
    meteor: bool = True,
) -> dict[str, float | int | None]:
    """METEOR, CIDEr, AP50, mIoU and Recall for grounded conversation generation, as the GLaMM evaluator.

    Predicted masks are paired with phrases **by position**: mask j belongs to phrase j. Inputs are aligned by image.

    - **AP50**: pycocotools `COCOeval(gt, dt, "segm")` on category 1, every predicted mask with score 1.0 (so the
      ranking is the input order and extra masks cost precision); the IoU=0.50 line, `stats[1]`. Images are ranked
      in sorted image-id order, as COCOeval does: pass GranD-f's stems as `reference["image_id"]` to reproduce the
      benchmark's tie order exactly (default: the list index).
    - **mIoU**: per image, greedy pairing on the global max IoU while it is > 0, the mean of the paired IoUs (0 if
      none), then the mean over images (see [`greedy_miou`]).
    - **Recall**: per image, greedy on the global max-IoU (GT, pred) pair; stop at IoU < 0.5 or text similarity
      < 0.5, else a true positive (see [`greedy_recall_matches`]). Recall = ΣTP / Σ #GT labels.
    - **METEOR / CIDEr**: pycocoevalcap on PTB-tokenised captions, one reference per image. Without `java` on PATH,
      METEOR is None and CIDEr falls back to [`simple_tokenize`] (a warning is logged). SPICE is never run. See
      [`caption_metrics`].

    A prediction whose mask count differs from its phrase count is scored as the reference scores it: mIoU and AP50
    use all its masks; Recall pairs normally until the best remaining pair (IoU >= 0.5) is a mask with no phrase,
    where the reference raises IndexError, prints it and adds **0 TP for the whole image** (its labels still count
    in the denominator). Such images are counted in `num_mismatched` / `num_failed_pairing` and logged.

    Differences from the reference: an IoU with union 0 (two empty masks) is 0, not nan; AP50 is 0 when there are
    no predicted masks at all (the reference crashes) and nan when there are no reference masks.

    Args:
        predictions (`Sequence[dict]`):
            One `{"caption": str, "phrases": list[str], "masks": list[mask]}` per image. A mask is an `(H, W)` bool
            array or a compressed COCO RLE dict (`{"size": [h, w], "counts": str}`), one per phrase, in order.
        references (`Sequence[dict]`):
            One `{"caption": str, "labels": list[str], "masks": list[mask]}` per image, one mask per label, plus an
            optional `"image_id"` used as the COCO image id.
        text_similarity (`Callable[[list[str], list[str]], np.ndarray]`, *optional*):
            `text_similarity(labels, phrases)` returns the `[len(labels), len(phrases)]` cosine matrix. Defaults
            to [`BertTextSimilarity`]`("bert-base-uncased")` (loaded on first use; pass a local path offline). It
            is called only for images with at least one pair of IoU >= 0.5, where the reference would read it.
        meteor (`bool`, *optional*, defaults to `True`):
            Run METEOR (its JVM takes 10-30 s to start); `False` reports it as None. See [`caption_metrics`].

    Returns:
        `dict`: `METEOR` (None without Java), `CIDEr`, `AP50`, `mIoU`, `Recall` in percent (unrounded), and the
        counts `TP`, `num_labels`, `num_images`, `num_mismatched`, `num_failed_pairing`.

    Example:

    >>> box = np.zeros((8, 8), bool); box[2:6, 2:6] = True
    >>> pred = {"caption": "a red box on a table", "phrases": ["a red box"], "masks": [box]}
    >>> ref = {"caption": "a red box on the table", "labels": ["red box"], "masks": [box]}
    >>> same = lambda labels, phrases: np.ones((len(labels), len(phrases)))  # stands in for BERT
    >>> m = gcg_metrics([pred], [ref], text_similarity=same, meteor=False)  # METEOR starts a slow JVM
    >>> round(m["AP50"], 2), round(m["mIoU"], 2), round(m["Recall"], 2)
    (100.0, 100.0, 100.0)

    """
    if len(predictions) != len(references):
        raise ValueError(f"gcg_metrics: {len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("gcg_metrics: no images")

    image_ids = [ref.get("image_id", i) for i, ref in enumerate(references)]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("gcg_metrics: reference image ids are not unique")

    gt_rles, pred_rles = [], []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        for key in ("caption", "labels", "masks"):
            if key not in ref:
                raise KeyError(f"gcg_metrics: reference {i} has no {key!r}")
        for key in ("caption", "phrases", "masks"):
            if key not in pred:
                raise KeyError(f"gcg_metrics: prediction {i} has no {key!r}")
        if len(ref["labels"]) != len(ref["masks"]):
            raise ValueError(
                f"gcg_metrics: reference {i} ({image_ids[i]!r}) has {len(ref['labels'])} labels but "
                f"{len(ref['masks'])} masks (one mask per label expected)"
            )
        g = [_to_rle(m, f"reference {i} mask {k}") for k, m in enumerate(ref["masks"])]
        p = [_to_rle(m, f"prediction {i} mask {k}") for k, m in enumerate(pred["masks"])]
        sizes = {tuple(r["size"]) for r in g + p}
        if len(sizes) > 1:
            raise ValueError(
                f"gcg_metrics: image {i} ({image_ids[i]!r}): masks have different sizes {sorted(sizes)} "
                f"(reference {[tuple(r['size']) for r in g]}, prediction {[tuple(r['size']) for r in p]})"
            )
        gt_rles.append(g)
        pred_rles.append(p)

    mious = []
    tp = 0
    num_labels = 0
    mismatched, failed = [], []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        mious.append(greedy_miou(iou_matrix(pred_rles[i], gt_rles[i])))

        num_labels += len(ref["labels"])  # counted before pairing, as in the reference
        phrases = list(pred["phrases"])
        if len(phrases) != len(pred_rles[i]):
            mismatched.append(i)
        ious = iou_matrix(gt_rles[i], pred_rles[i])  # [GT, pred], the reference's orientation for Recall
        if ious.size == 0 or ious.max() < IOU_THRESHOLD:
            continue  # the loop stops before reading any text similarity
        if phrases:
            if text_similarity is None:
                text_similarity = BertTextSimilarity()
            sims = np.asarray(text_similarity(list(ref["labels"]), phrases), dtype=np.float64)
            if sims.shape != (len(ref["labels"]), len(phrases)):
                raise ValueError(
                    f"gcg_metrics: image {i}: text_similarity returned shape {sims.shape}, expected "
                    f"{(len(ref['labels']), len(phrases))} (labels x phrases)"
                )
        else:
            sims = np.zeros((len(ref["labels"]), 0))
        try:
            tp += greedy_recall_matches(ious, sims)
        except _PairingError:
            failed.append(i)

    if mismatched:
        logger.warning(
            "gcg_metrics: %d image(s) have a mask count different from their phrase count (first indices: %s); "
            "%d of them scored 0 Recall TP as in the reference (first indices: %s)",
            len(mismatched), mismatched[:10], len(failed), failed[:10],
        )  # fmt: skip

    captions = caption_metrics([p["caption"] for p in predictions], [r["caption"] for r in references], meteor=meteor)
    return {
        **captions,
        "AP50": _ap50(image_ids, gt_rles, pred_rles),
        "mIoU": 100.0 * float(np.mean(mious)),
        "Recall": 100.0 * tp / num_labels if num_labels > 0 else 0.0,
        "TP": tp,
        "num_labels": num_labels,
        "num_images": len(references),
        "num_mismatched": len(mismatched),
        "num_failed_pairing": len(failed),
    }
