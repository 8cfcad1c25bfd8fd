"""Mask-decode throughput for a GRPO batch: `MaskTokenizer.decode_batch` against the reference demo's naive path.

Workload: 4 images x 8 completions x 2 masks = 64 code pairs. The naive path is what the reference demo does for
each completion: run the image encoder once per mask, then decode. `decode_batch` runs the image encoder once per
distinct image, decodes each distinct (image, code pair) once, and batches the mask decoder.

    python benchmarks/mask_decode.py                  # micro config on CPU (+ hiera-L bf16 when CUDA is present)
    python benchmarks/mask_decode.py --naive-full     # time every naive decode instead of extrapolating
    python benchmarks/mask_decode.py --hiera-l-cpu    # + hiera-L on CPU: per-pass costs measured, totals computed

Two code scenarios: `distinct` (all 64 pairs different, so only the encoder cache helps) and `grpo` (each completion
repeats its image's reference pair with probability `--repeat-prob`, as sampled completions often agree).
The naive path costs the same per mask whatever the codes, so by default it is timed on the first completion of
each image (8 masks) and scaled to 64; the table says so.
"""

import argparse
import time

import numpy as np
import torch

from samtok_rl.mask_tokenizer import DEFAULT_SAM2_CONFIG, MaskTokenizer, build_micro_mask_tokenizer


def make_workload(num_images: int, completions: int, masks: int, repeat_prob: float, seed: int):
    """(items, images): one item per completion, codes (masks, 2) int64."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(num_images)]
    items = []
    for image in images:
        reference = rng.integers(0, 256, (masks, 2))  # (masks, 2) the "correct" answer of this prompt
        for _ in range(completions):
            codes = rng.integers(0, 256, (masks, 2))
            keep = rng.random(masks) < repeat_prob
            codes[keep] = reference[keep]
            items.append((image, codes))
    return items, images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batched(tok: MaskTokenizer, items) -> dict:
    tok.clear_cache()  # cold cache: the image encoder runs are part of the cost
    enc, dec = tok.encoder_passes, tok.decoder_passes
    sync(tok.device)
    start = time.perf_counter()
    tok.decode_batch(items)
    sync(tok.device)
    return {
        "wall": time.perf_counter() - start,
        "encoder_passes": tok.encoder_passes - enc,
        "decoder_rows": tok.decoder_passes - dec,
    }


def time_naive(tok: MaskTokenizer, items, completions: int, full: bool) -> dict:
    """Reference-demo path: image encoder once per mask (no feature reuse), one decode per mask."""
    timed = items if full else items[::completions]  # first completion of each image
    enc, dec = tok.encoder_passes, tok.decoder_passes
    sync(tok.device)
    start = time.perf_counter()
    for image, codes in timed:
        for pair in codes:
            tok.clear_cache()
            tok.decode(image, pair[None])
    sync(tok.device)
    wall = time.perf_counter() - start
    scale = len(items) / len(timed)
    return {
        "wall": wall * scale,
        "encoder_passes": round((tok.encoder_passes - enc) * scale),
        "decoder_rows": round((tok.decoder_passes - dec) * scale),
        "extrapolated": not full,
    }


def run(tok: MaskTokenizer, label: str, args, naive_full: bool) -> list[list[str]]:
    rows = []
    num_masks = args.images * args.completions * args.masks
    naive = None
    for scenario, prob in (("distinct", 0.0), ("grpo", args.repeat_prob)):
        items, _ = make_workload(args.images, args.completions, args.masks, prob, args.seed)
        if naive is None:
            naive = time_naive(tok, items, args.completions, naive_full)
            note = f"x{args.completions} extrapolated" if naive["extrapolated"] else "measured"
            rows.append([label, "naive (reference demo)", "any", str(naive["encoder_passes"]),
                         str(naive["decoder_rows"]), f"{naive['wall']:.2f} ({note})",
                         f"{num_masks / naive['wall']:.1f}", "1.0x"])  # fmt: skip
        batched = time_batched(tok, items)
        rows.append([label, "decode_batch", scenario, str(batched["encoder_passes"]), str(batched["decoder_rows"]),
                     f"{batched['wall']:.2f}", f"{num_masks / batched['wall']:.1f}",
                     f"{naive['wall'] / batched['wall']:.1f}x"])  # fmt: skip
        if batched["encoder_passes"] != args.images:
            raise AssertionError(f"expected {args.images} encoder passes, got {batched['encoder_passes']}")
    return rows


def hiera_l_cpu_rows(args) -> list[list[str]]:
    """hiera-L (random weights) on CPU, where a full naive run would take most of an hour: the cost of one image-
    encoder pass and of one decoder row are measured, and the two paths' totals are computed from them
    (naive: one encoder pass per mask; decode_batch: one per image)."""
    tok = MaskTokenizer.from_config(DEFAULT_SAM2_CONFIG, device="cpu")
    image = np.random.default_rng(args.seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    codes = np.random.default_rng(args.seed + 1).integers(0, 256, (args.completions * args.masks, 2))
    tok.clear_cache()
    start = time.perf_counter()
    tok.decode(image, codes[:1])  # one encoder pass + one decoder row
    first = time.perf_counter() - start
    start = time.perf_counter()
    tok.decode(image, codes)  # cached features: decoder rows only
    per_row = (time.perf_counter() - start) / len(codes)
    encoder = first - per_row
    num_masks = args.images * args.completions * args.masks
    naive = num_masks * (encoder + per_row)
    batched = args.images * encoder + num_masks * per_row  # the distinct-codes case: every pair decoded
    label = f"hiera-L / cpu ({torch.get_num_threads()} threads)"
    note = f"computed: encoder {encoder:.1f} s/pass, decoder {per_row * 1e3:.0f} ms/row"
    return [
        [label, "naive (reference demo)", "any", str(num_masks), str(num_masks), f"{naive:.0f} ({note})",
         f"{num_masks / naive:.2f}", "1.0x"],
        [label, "decode_batch", "distinct", str(args.images), str(num_masks), f"{batched:.0f} (computed)",
         f"{num_masks / batched:.2f}", f"{naive / batched:.1f}x"],
    ]  # fmt: skip


def print_table(rows: list[list[str]]) -> None:
    header = ["model/device", "path", "codes", "encoder passes", "decoder rows", "wall s", "masks/s", "speedup"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--masks", type=int, default=2)
    parser.add_argument(
        "--repeat-prob", type=float, default=0.5, help="grpo scenario: P(completion repeats the reference pair)"
    )
    parser.add_argument("--naive-full", action="store_true", help="time all naive decodes instead of extrapolating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA hiera-L measurement")
    parser.add_argument("--hiera-l-cpu", action="store_true", help="also hiera-L on CPU (per-pass costs measured)")
    args = parser.parse_args()

    rows = []
    if not args.skip_cpu:
        micro = build_micro_mask_tokenizer(seed=0, device="cpu")
        micro.decode(np.zeros((8, 8, 3), np.uint8), [[0, 0]])  # warm-up (allocator, kernels)
        rows += run(micro, f"micro / cpu ({torch.get_num_threads()} threads)", args, args.naive_full)

    if args.hiera_l_cpu:
        rows += hiera_l_cpu_rows(args)

    if torch.cuda.is_available():
        # Random weights are enough for throughput; bf16 autocast as the reference.
        hiera_l = MaskTokenizer.from_config(DEFAULT_SAM2_CONFIG, device="cuda", decode_chunk_size=64)
        hiera_l.decode(np.zeros((8, 8, 3), np.uint8), [[0, 0]] * 4)
        name = torch.cuda.get_device_name()
        rows += run(hiera_l, f"hiera-L bf16 / {name}", args, naive_full=True)

    print_table(rows)


if __name__ == "__main__":
    main()
