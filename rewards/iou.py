"""Pixel-IoU reward: decode the predicted spans with the mask tokenizer and match them to the GT masks (Hungarian).

A completion decodes at most `span_cap(M)` of its spans (M: its GT masks): the first ones. The spans past the cap are
not decoded and count as unmatched predictions, so the score stays sum of matched IoUs / max(N_pred, M) over all
N_pred spans, and equals the uncapped score whenever a completion has at most `span_cap(M)` spans.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards._text import completion_texts, split
from samtok_rl.files import open_rgb
from samtok_rl.mask_tokenizer import build_mask_tokenizer, check_mask_tokenizer_source
from samtok_rl.masks import decode_rles
from samtok_rl.parsing import parse_masks


__all__ = ["MIN_SPAN_CAP", "MaskIoUReward", "get_mask_iou_reward", "matched_iou_score", "span_cap"]

# Spans decoded per completion: at least this many, or twice the GT masks. A looping policy can write a thousand spans,
# each a mask-decoder row (a 1,000-span completion took 40 s on CPU). Spans past the cap are counted, not decoded: the
# score can only come out lower than the uncapped one (a later span might have matched better), never higher, so a
# flood of spans is never rewarded.
MIN_SPAN_CAP = 16


def span_cap(num_gt: int) -> int:
    """The most spans of one completion the reward decodes: `max(MIN_SPAN_CAP, 2 * num_gt)`.

    Example:
    >>> span_cap(1), span_cap(12)
    (16, 24)
    """
    return max(MIN_SPAN_CAP, 2 * num_gt)


def matched_iou_score(pred: np.ndarray, gt: np.ndarray, undecoded: int = 0) -> float:
    """Hungarian matching on 1 - IoU; sum of matched IoUs / max(N_pred, N_GT). Both empty = 1.0, one empty = 0.0.

    Args:
        pred (`np.ndarray`): `(N, H, W)` bool predicted masks.
        gt (`np.ndarray`): `(M, H, W)` bool GT masks (same H, W).
        undecoded (`int`, *optional*, defaults to `0`): predicted spans past the reward's cap, not decoded: they
            match nothing and count in N_pred (`N_pred = N + undecoded`).

    Example:
    >>> gt = np.zeros((1, 4, 4), dtype=bool); gt[0, :2] = True
    >>> pred = np.zeros((2, 4, 4), dtype=bool); pred[0, :1] = True; pred[1, 2:] = True
    >>> matched_iou_score(pred, gt)  # IoU 0.5 for the best match, over max(2, 1)
    0.25
    """
    num_pred = len(pred) + undecoded
    if len(pred) == 0 or len(gt) == 0:
        return 1.0 if num_pred == len(gt) else 0.0
    p = pred.reshape(len(pred), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = p @ g.T  # (N, M)
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = np.clip(inter / (union + 1e-7), 0.0, 1.0)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return float(iou[rows, cols].sum()) / max(num_pred, len(gt))


def _resize_nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Nearest-neighbour index sampling: used only when an image and its GT masks disagree in size.
    h, w = masks.shape[1:]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return masks[:, rows[:, None], cols[None, :]]


class MaskIoUReward:
    """Pixel-IoU reward on decoded masks; build it with `get_mask_iou_reward`.

    The predicted spans (answer part when present, else the full response; the codec's repair rules, so a span
    missing its second code decodes with code -1) are decoded in one `MaskTokenizer.decode_batch` call per reward
    call, so the image encoder runs once per distinct image. A completion decodes at most its first
    `span_cap(M) = max(16, 2 * M)` spans (M GT masks); each span past them is a prediction that matches nothing: the
    score is sum of matched IoUs / max(N_pred, M) over all N_pred spans, the uncapped score whenever
    N_pred <= span_cap(M). Rows whose `gt_masks` is missing or `None` give `None`.
    The tokenizer loads lazily on the process's own device, so the reward pickles without weights.

    Args:
        mask_tokenizer (`str`, `Path` or `MaskTokenizer`, *optional*):
            `micro`, a SAMTok folder / checkpoint / Hub id, or a loaded tokenizer (see `build_mask_tokenizer`).
        sam2_config (`str` or `Path`, *optional*): with `checkpoint`, load with `MaskTokenizer.from_files`.
        checkpoint (`str` or `Path`, *optional*): see `sam2_config`.
        device (`str`, *optional*): defaults to this process's CUDA device when there is one, else CPU.
    """

    __name__ = "mask_iou_reward"

    def __init__(self, mask_tokenizer=None, sam2_config=None, checkpoint=None, device=None) -> None:
        if mask_tokenizer is not None or checkpoint is not None or sam2_config is not None:
            check_mask_tokenizer_source(mask_tokenizer, sam2_config, checkpoint)  # fails here, not at the first step
        self.mask_tokenizer = mask_tokenizer
        self.sam2_config = sam2_config
        self.checkpoint = checkpoint
        self.device = device
        self._loaded = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    @property
    def configured(self) -> bool:
        """Whether a mask tokenizer is named (`REWARDS["mask_iou_reward"]` is not; `rewards.get_reward_funcs` names it)."""
        return self.mask_tokenizer is not None or self.checkpoint is not None

    def tokenizer(self):
        """The mask tokenizer, built on first use on this process's device (`build_mask_tokenizer`)."""
        if self._loaded is None:
            if not self.configured:
                raise ValueError(
                    "mask_iou_reward needs a mask tokenizer: set `mask_tokenizer` in the recipe, or build it with "
                    "rewards.get_mask_iou_reward(<micro, folder, checkpoint or hub id>)"
                )
            self._loaded = build_mask_tokenizer(
                self.mask_tokenizer, self.sam2_config, self.checkpoint, device=self.device
            )
        return self._loaded

    def __call__(
        self, prompts, completions, completion_ids=None, gt_masks=None, image=None, images=None, **kwargs
    ) -> list[float | None]:
        texts = completion_texts(completions, completion_ids)
        rewards: list[float | None] = [None] * len(texts)
        if gt_masks is None:
            return rewards
        gt_cache: dict[tuple, np.ndarray] = {}
        image_cache: dict[str, object] = {}
        todo = []  # (row, image, codes (N, 2), gt (M, H, W))
        for i, text in enumerate(texts):
            if gt_masks[i] is None:
                continue
            key = tuple((tuple(r["size"]), r["counts"]) for r in gt_masks[i])
            gt = gt_cache.get(key)
            if gt is None:
                gt = gt_cache[key] = decode_rles(gt_masks[i])
            answer = split(text)[1] if text is not None else None
            part = answer if answer is not None else text
            codes = np.array(parse_masks(part) if part is not None else [], dtype=np.int64).reshape(-1, 2)
            if len(codes) == 0 or len(gt) == 0:
                rewards[i] = 1.0 if len(codes) == len(gt) else 0.0
                continue
            cap = span_cap(len(gt))  # the first spans only; the rest count as unmatched (see the module doc)
            todo.append((i, image[i] if image is not None else images[i][0], codes[:cap], gt, len(codes[cap:])))
        if todo:
            tokenizer = self.tokenizer()
            decoded = tokenizer.decode_batch([(self._open(img, image_cache), codes) for _, img, codes, _, _ in todo])
            for (i, _, _, gt, undecoded), pred in zip(todo, decoded):
                if pred.shape[1:] != gt.shape[1:]:
                    pred = _resize_nearest(pred, gt.shape[1:])
                rewards[i] = matched_iou_score(pred, gt, undecoded)
        return rewards

    @staticmethod
    def _open(img, cache: dict):
        # TRL hands PIL images over; a path column (the `prepare` output read directly) is opened once per call.
        if not isinstance(img, (str, Path)):
            return img
        if str(img) not in cache:
            cache[str(img)] = open_rgb(img)
        return cache[str(img)]

    def __repr__(self) -> str:
        source = self.mask_tokenizer if self.checkpoint is None else self.checkpoint
        return f"{type(self).__name__}({source!r})"


def get_mask_iou_reward(mask_tokenizer=None, sam2_config=None, checkpoint=None, device=None) -> MaskIoUReward:
    """Build the pixel-IoU reward (see `MaskIoUReward`).

    Example:
    >>> from samtok_rl.mask_tokenizer import build_micro_mask_tokenizer
    >>> reward = get_mask_iou_reward(build_micro_mask_tokenizer())
    >>> reward.__name__
    'mask_iou_reward'
    >>> reward(None, ["<answer>No target.</answer>", "<answer>No target.</answer>"], gt_masks=[[], None], image=[None, None])
    [1.0, None]
    """
    return MaskIoUReward(mask_tokenizer=mask_tokenizer, sam2_config=sam2_config, checkpoint=checkpoint, device=device)
