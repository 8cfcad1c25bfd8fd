"""SAMTok mask tokenizer (VQ-SAM2) built on PyPI `sam2`.

A mask plus its image becomes two integer codes (one per residual-quantizer level), and two codes plus the image
become a mask again. The SAM 2.1 parts (Hiera + FPN image encoder, prompt encoder, mask decoder) are upstream
`sam2` modules instantiated from a sam2 hydra YAML; this package adds only what SAMTok adds:

- `sam_mask_encoder`: an upstream `TwoWayTransformer` with one learned query, registered inside `SAM2Base` so the
  released key names (`model.sam2_model.sam_mask_encoder.*`) load strictly;
- a 2-level residual quantizer with 257-row codebooks (row 256 is an all-zero padding row) and the EMA buffers of
  the original, so the released state dict loads strictly;
- the decode path, which appends the summed code embedding as an extra sparse prompt token and, unlike upstream
  `SAM2Base._forward_sam_heads`, keeps the logits when the object score is <= 0.

Numerics follow the original `VQ_SAM2` (SAMTok's `vq_sam2.py`) exactly: PIL bicubic square resize,
boxes from `masks_to_boxes / [W, H, W, H]` given as two points with labels 2/3, a missing code (-1) read as that
level's code 0, bilinear upsampling and `logits > 0.5`, fp32 on CPU and bf16 autocast on CUDA.

Importing this package does not import `sam2`: `import sam2` initialises Hydra globally, so it is deferred to the
moment a model is built.

Layout: `modules` (the SAMTok modules), `image` (image conversion and resize), `checkpoint` (state-dict files, sam2
configs), `tokenizer` (`MaskTokenizer`), `micro` (the seeded random micro tokenizer), `build`
(`build_mask_tokenizer`: micro, a folder, a Hub id or a YAML + checkpoint pair, and the device rule).
"""

from samtok_rl.mask_tokenizer.build import (
    MICRO,
    build_mask_tokenizer,
    check_mask_tokenizer_files,
    check_mask_tokenizer_source,
    default_device,
    recorded_mask_tokenizer,
    same_mask_tokenizer,
)
from samtok_rl.mask_tokenizer.checkpoint import (
    CHECKPOINT_NAME,
    DEFAULT_SAM2_CONFIG,
    MICRO_SAM2_CONFIG,
    CheckpointMismatchError,
)
from samtok_rl.mask_tokenizer.image import resize_image
from samtok_rl.mask_tokenizer.micro import build_micro_mask_tokenizer
from samtok_rl.mask_tokenizer.modules import MaskEncoder, ResidualQuantizer, VQCodebook
from samtok_rl.mask_tokenizer.tokenizer import MaskTokenizer


__all__ = [
    "CHECKPOINT_NAME",
    "DEFAULT_SAM2_CONFIG",
    "MICRO",
    "MICRO_SAM2_CONFIG",
    "CheckpointMismatchError",
    "MaskEncoder",
    "MaskTokenizer",
    "ResidualQuantizer",
    "VQCodebook",
    "build_mask_tokenizer",
    "build_micro_mask_tokenizer",
    "check_mask_tokenizer_files",
    "check_mask_tokenizer_source",
    "default_device",
    "recorded_mask_tokenizer",
    "resize_image",
    "same_mask_tokenizer",
]
