"""The pixel-IoU reward on one completion of 1,000 distinct spans (one GT mask), micro tokenizer on CPU: every span
decoded (the reward before its span cap: `decode_batch` of all 1,000 pairs, then the Hungarian score) against the
reward as it is (the first `span_cap(1)` = 16 spans decoded, the rest counted as unmatched).

    python benchmarks/iou_span_cap.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


# Run as a script, this file's folder is sys.path[0] and benchmarks/rewards.py would shadow the `rewards` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rewards.iou import get_mask_iou_reward, matched_iou_score, span_cap  # noqa: E402
from samtok_rl.data import sample_paths  # noqa: E402
from samtok_rl.mask_tokenizer import build_mask_tokenizer  # noqa: E402
from samtok_rl.masks import rle_from_mask  # noqa: E402
from samtok_rl.tokens import format_mask  # noqa: E402


def main() -> None:
    tokenizer = build_mask_tokenizer("micro", device="cpu")
    image = np.asarray(Image.open(sample_paths().images / "horse.jpg").convert("RGB"))
    gt = np.zeros((1, *image.shape[:2]), dtype=bool)
    gt[0, 40:200, 60:300] = True
    codes = np.array([[k % 256, k // 256] for k in range(1000)], dtype=np.int64)
    text = "<answer>" + " ".join(format_mask(int(a), int(b)) for a, b in codes) + "</answer>"
    tokenizer.decode_batch([(image, codes[:1])])  # image features cached: both paths time the decoder alone

    start, rows = time.perf_counter(), tokenizer.decoder_passes
    uncapped = matched_iou_score(tokenizer.decode_batch([(image, codes)])[0], gt)
    before = time.perf_counter() - start, tokenizer.decoder_passes - rows

    reward = get_mask_iou_reward(tokenizer)
    start, rows = time.perf_counter(), tokenizer.decoder_passes
    (capped,) = reward(None, [text], gt_masks=[[rle_from_mask(gt[0])]], image=[image])
    after = time.perf_counter() - start, tokenizer.decoder_passes - rows

    print(f"torch threads {torch.get_num_threads()}, span_cap(1) = {span_cap(1)}")
    print("| reward | decoder rows | wall s | score |\n|---|---:|---:|---:|")
    print(f"| every span decoded (before) | {before[1]} | {before[0]:.2f} | {uncapped:.5f} |")
    print(f"| first span_cap(M) decoded (now) | {after[1]} | {after[0]:.2f} | {capped:.5f} |")


if __name__ == "__main__":
    main()
