"""Pixel-IoU reward: decode the predicted spans with the mask tokenizer and match them to the GT masks (Hungarian)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards._text import completion_texts, split
from samtok_rl.data import decode_rle


__all__ = ["MaskIoUReward", "decode_rles", "get_mask_iou_reward", "matched_iou_score"]


def decode_rles(rles: list[dict]) -> np.ndarray:
    """JSON COCO RLEs (one image's GT masks) -> `(K, H, W)` bool; `[]` gives `(0, 0, 0)`.

    Example:
    >>> from samtok_rl.data import rle_from_mask
    >>> m = np.zeros((4, 5), dtype=bool); m[1:3, 2:4] = True
    >>> decode_rles([rle_from_mask(m)]).shape, int(decode_rles([rle_from_mask(m)]).sum())
    ((1, 4, 5), 4)
    """
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([decode_rle(r) for r in rles])  # (K, H, W)


def matched_iou_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Hungarian matching on 1 - IoU; sum of matched IoUs / max(N_pred, N_GT). Both empty = 1.0, one empty = 0.0.

    Args:
        pred (`np.ndarray`): `(N, H, W)` bool predicted masks.
        gt (`np.ndarray`): `(M, H, W)` bool GT masks (same H, W).

    Example:
    >>> gt = np.zeros((1, 4, 4), dtype=bool); gt[0, :2] = True
    >>> pred = np.zeros((2, 4, 4), dtype=bool); pred[0, :1] = True; pred[1, 2:] = True
    >>> matched_iou_score(pred, gt)  # IoU 0.5 for the best match, over max(2, 1)
    0.25
    """
    if len(pred) == 0 or len(gt) == 0:
        return 1.0 if len(pred) == len(gt) else 0.0
    p = pred.reshape(len(pred), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = p @ g.T  # (N, M)
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = np.clip(inter / (union + 1e-7), 0.0, 1.0)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return float(iou[rows, cols].sum()) / max(len(pred), len(gt))


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
    call, so the image encoder runs once per distinct image. Rows whose `gt_masks` is missing or `None` give `None`.
    The tokenizer loads lazily on the process's own device, so the reward pickles without weights.

    Args:
        mask_tokenizer (`str`, `Path` or `MaskTokenizer`, *optional*):
            a SAMTok folder / checkpoint / Hub id for `MaskTokenizer.from_pretrained`, or a loaded tokenizer.
        sam2_config (`str` or `Path`, *optional*): with `checkpoint`, load with `MaskTokenizer.from_files`.
        checkpoint (`str` or `Path`, *optional*): see `sam2_config`.
        device (`str`, *optional*): defaults to the current CUDA device when there is one, else CPU.
    """

    __name__ = "mask_iou_reward"

    def __init__(self, mask_tokenizer=None, sam2_config=None, checkpoint=None, device=None) -> None:
        if (sam2_config is None) != (checkpoint is None):
            raise ValueError("sam2_config and checkpoint go together")
        if mask_tokenizer is not None and checkpoint is not None:
            raise ValueError("pass either mask_tokenizer or sam2_config + checkpoint, not both")
        self.mask_tokenizer = mask_tokenizer
        self.sam2_config = sam2_config
        self.checkpoint = checkpoint
        self.device = device
        self._loaded = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def tokenizer(self):
        """The mask tokenizer, loaded on first use."""
        if self._loaded is None:
            import torch

            from samtok_rl.mask_tokenizer import MaskTokenizer

            if isinstance(self.mask_tokenizer, MaskTokenizer):
                self._loaded = self.mask_tokenizer
            elif self.mask_tokenizer is None and self.checkpoint is None:
                raise ValueError(
                    "mask_iou_reward needs a mask tokenizer: use "
                    "rewards.get_mask_iou_reward(mask_tokenizer=<folder, checkpoint or hub id>) "
                    "or get_mask_iou_reward(sam2_config=..., checkpoint=...)"
                )
            else:
                # Under accelerate each process has set its own current CUDA device.
                device = self.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
                if self.checkpoint is not None:
                    self._loaded = MaskTokenizer.from_files(self.sam2_config, self.checkpoint, device=device)
                else:
                    self._loaded = MaskTokenizer.from_pretrained(self.mask_tokenizer, device=device)
        return self._loaded

    def __call__(
        self, prompts, completions, completion_ids=None, gt_masks=None, image=None, images=None, **kwargs
    ) -> list[float | None]:
        from samtok_rl.tokens import parse_masks

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
            todo.append((i, image[i] if image is not None else images[i][0], codes, gt))
        if todo:
            tokenizer = self.tokenizer()
            decoded = tokenizer.decode_batch([(self._open(img, image_cache), codes) for _, img, codes, _ in todo])
            for (i, _, _, gt), pred in zip(todo, decoded):
                if pred.shape[1:] != gt.shape[1:]:
                    pred = _resize_nearest(pred, gt.shape[1:])
                rewards[i] = matched_iou_score(pred, gt)
        return rewards

    @staticmethod
    def _open(img, cache: dict):
        # TRL hands PIL images over; a path column (the `prepare` output read directly) is opened once per call.
        if not isinstance(img, (str, Path)):
            return img
        if str(img) not in cache:
            from PIL import Image

            with Image.open(img) as opened:
                cache[str(img)] = opened.convert("RGB")
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
