"""Small files in the authors' RL parquet schema, built from the bundled sample (tests and the README walk-through).

[`write_easyr1_parquet`] writes rows as CycleGRPO's builders do (`datasets`, `images` cast to `Sequence(Image())`,
`to_parquet`). [`gres8k_like`] makes a GRES file with the proportions of the released `gres8k_train.parquet`
(8,337 rows: 4,666 "No target." rows, 56%; 3,671 rows with masks, 1,301 of them with several) on the bundled
gRefCOCO sample. As in the builders, `masks` are what the answer's codes decode to through the mask tokenizer.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from samtok_rl.files import open_rgb
from samtok_rl.masks import decode_rle, rle_from_mask
from samtok_rl.parsing import NO_TARGET
from samtok_rl.tokens import format_mask


# gres8k_train.parquet (public notes on zhouyik/SAMTok_Training_Data).
GRES8K_ROWS, GRES8K_NO_TARGET, GRES8K_WITH_MASKS, GRES8K_SEVERAL = 8337, 4666, 3671, 1301
# Where the released files' image paths point: the authors' machine, not this one.
AUTHORS_IMAGE_DIR = "/mnt/authors/data/coco/train2014"


def write_easyr1_parquet(records: list[dict], path: str | Path) -> Path:
    """Write `records` (`images`, `problem`, `answer`, `masks`, `source`) as the builders write an RL parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_list(records).cast_column("images", datasets.Sequence(datasets.Image()))
    # The same table `to_parquet` writes; pyarrow directly because `to_parquet` sizes every image path it finds, and
    # the authors' paths do not exist here.
    pq.write_table(dataset.data.table, path)
    return path


def coded_masks(tokenizer, image_path: str, rles: list[dict]) -> tuple[list[str], list[dict]]:
    """The mask spans of `rles` and, as the builders store them, the masks their codes decode to."""
    if not rles:
        return [], []
    rgb = np.asarray(open_rgb(image_path))
    codes = tokenizer.encode(rgb, np.stack([decode_rle(r) for r in rles]))
    decoded = tokenizer.decode(rgb, codes)
    return [format_mask(int(c0), int(c1)) for c0, c1 in codes], [rle_from_mask(m) for m in decoded]


def image_entry(image_path: str, embed: bool) -> dict:
    """An `images` element: the file's bytes, or (as in gres8k_train.parquet) no bytes and the authors' path."""
    if embed:
        return {"bytes": Path(image_path).read_bytes(), "path": None}
    return {"bytes": None, "path": f"{AUTHORS_IMAGE_DIR}/{Path(image_path).name}"}


def gres8k_like(rows: int, tokenizer, *, embed: bool = False, image_marker: bool = True) -> list[dict]:
    """`rows` GRES records in gres8k_train.parquet's proportions (no-target share, rows with several masks).

    Args:
        rows: how many records.
        tokenizer: the mask tokenizer of the codes (`build_mask_tokenizer("micro")` in tests).
        embed: embed the image bytes (the mixes) instead of the authors' paths (gres8k_train.parquet).
        image_marker: start the problem with `<image>`.
    """
    from samtok_rl.prepare import read_source

    source = read_source("gres", sample=True).to_list()
    kinds = {
        "none": cycle([r for r in source if not r["gt_masks"]]),
        "one": cycle([r for r in source if len(r["gt_masks"]) == 1]),
        # Two masks: the released rows with several masks hold 2.03 on average (2,647 masks in 1,301 rows).
        "several": cycle([r for r in source if len(r["gt_masks"]) == 2]),
    }
    empty = round(rows * GRES8K_NO_TARGET / GRES8K_ROWS)
    several = round((rows - empty) * GRES8K_SEVERAL / GRES8K_WITH_MASKS)
    plan = ["none"] * empty + ["several"] * several + ["one"] * (rows - empty - several)
    order = np.random.default_rng(0).permutation(rows)  # interleaved, as in the released file
    records = []
    for k in order:
        row = next(kinds[plan[k]])
        spans, masks = coded_masks(tokenizer, row["image"], row["gt_masks"])
        problem = f"Please segment {row['expression'].strip().lower()} in this image."
        records.append(
            {
                "images": [image_entry(row["image"], embed)],
                "problem": f"<image>{problem}" if image_marker else problem,
                "answer": ", ".join(spans) if spans else NO_TARGET,
                "masks": masks or None,
                "source": "gres",
            }
        )
    return records


def gcg_like(rows: int, tokenizer, *, embed: bool = True) -> list[dict]:
    """`rows` GCG records (source `grandf_gcg`) from the bundled GranD-f sample: the caption with each phrase in
    Qwen's grounding tokens followed by its mask span, and the bare GCG question (a one-element list, as in the mixes).
    """
    from samtok_rl.parsing import parse_masks
    from samtok_rl.prepare import gcg_solution, read_source
    from samtok_rl.prompts import GCG_QUESTION

    source = cycle(read_source("gcg", sample=True).to_list())
    records = []
    for _ in range(rows):
        row = next(source)
        spans, masks = coded_masks(tokenizer, row["image"], row["gt_masks"])
        codes = [parse_masks(span)[0] for span in spans]
        records.append(
            {
                "images": [image_entry(row["image"], embed)],
                "problem": [GCG_QUESTION],
                "answer": gcg_solution(row["caption"], row["spans"], codes),
                "masks": masks,
                "source": "grandf_gcg",
            }
        )
    return records


def main(argv: list[str] | None = None) -> Path:
    """`python -m samtok_rl.data.easyr1_synthetic --rows 100 --out gres8k_like.parquet`: a gres8k-like file from the
    bundled sample, coded with the micro mask tokenizer (convert it with `--image_root samtok_rl/assets/sample/images
    --mask_tokenizer micro`)."""
    import argparse

    from samtok_rl.mask_tokenizer import build_mask_tokenizer

    parser = argparse.ArgumentParser(prog="python -m samtok_rl.data.easyr1_synthetic", description=main.__doc__)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--out", required=True)
    parser.add_argument("--embed", action="store_true", help="embed the image bytes instead of the authors' paths")
    args = parser.parse_args(argv)
    path = write_easyr1_parquet(
        gres8k_like(args.rows, build_mask_tokenizer("micro", device="cpu"), embed=args.embed), args.out
    )
    print(f"wrote {args.rows} rows to {path}")
    return path


if __name__ == "__main__":
    main()
