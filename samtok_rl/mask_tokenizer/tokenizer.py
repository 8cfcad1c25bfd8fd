"""`MaskTokenizer`: SAM 2 plus SAMTok's modules, with the encode (mask -> codes) and decode (codes -> mask) paths."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file
from torch import nn
from torchvision.ops import masks_to_boxes

from samtok_rl.mask_tokenizer.checkpoint import (
    CHECKPOINT_NAME,
    DEFAULT_SAM2_CONFIG,
    CheckpointMismatchError,
    _build_sam2_base,
    _format_keys,
    _load_state_dict_file,
)
from samtok_rl.mask_tokenizer.image import _IMG_MEAN, _IMG_STD, ImageLike, _as_rgb, _image_key, resize_image
from samtok_rl.mask_tokenizer.modules import MaskEncoder, ResidualQuantizer, _VQSAM2Body


if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


# The original's decode threshold is applied to the logits, not to a sigmoid (sigmoid > ~0.6225).
MASK_THRESHOLD = 0.5


def _as_codes(codes: object, codebook_size: int, depth: int) -> np.ndarray:
    """Validated `(N, depth)` int64 copy of `codes` (values in `[-1, codebook_size)`)."""
    array = np.array(codes)  # always a copy: the caller's array is never touched
    if array.size == 0:
        return np.zeros((0, depth), dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != depth:
        raise ValueError(f"codes must have shape (N, {depth}), got {array.shape}")
    bad = np.argwhere((array < -1) | (array >= codebook_size))
    if len(bad):
        row, level = (int(i) for i in bad[0])
        raise ValueError(
            f"code {int(array[row, level])} at row {row}, level {level} is out of range: "
            f"per-level codes are in [0, {codebook_size}) or -1 (missing)"
        )
    return array.astype(np.int64)


@dataclass
class _ImageFeatures:
    """Backbone outputs for one image, batch size 1."""

    pix_feat: torch.Tensor  # (1, C, h, w): top FPN level + no_mem_embed
    high_res: list[torch.Tensor] | None  # [(1, C/8, 4h, 4w), (1, C/4, 2h, 2w)] after conv_s0/conv_s1
    size: tuple[int, int]  # original (H, W)


class MaskTokenizer(nn.Module):
    """SAMTok mask tokenizer: binary mask + image <-> 2 per-level codes.

    The state dict has the released layout (`model.sam2_model.*`, `quantizer.codebooks.{i}.*`), so released
    checkpoints load strictly. Use the builders rather than the constructor: `from_files`, `from_pretrained`,
    `build_micro_mask_tokenizer`.

    Image features are cached by image content (bounded LRU), so encoding and decoding many masks of one image runs
    the image encoder once; `encoder_passes` counts image-encoder runs (one per image) and `decoder_passes` counts
    code pairs run through the mask decoder.

    Args:
        sam2_model (`SAM2Base`): upstream SAM 2 model; `sam_mask_encoder` is registered inside it here.
        codebook_size (`int`, *optional*, defaults to 256): searchable rows per quantizer level.
        codebook_depth (`int`, *optional*, defaults to 2): quantizer levels.
        feature_cache_size (`int`, *optional*, defaults to 16): images whose features are kept (LRU).
        decode_chunk_size (`int`, *optional*, defaults to 32): code pairs per mask-decoder batch.

    Example:

    >>> from samtok_rl.mask_tokenizer import build_micro_mask_tokenizer
    >>> tok = build_micro_mask_tokenizer(seed=0)
    >>> image = np.zeros((64, 96, 3), np.uint8); mask = np.zeros((1, 64, 96), bool); mask[0, 10:30, 20:50] = True
    >>> codes = tok.encode(image, mask)  # (1, 2) int64
    >>> tok.decode(image, codes).shape
    (1, 64, 96)
    """

    def __init__(
        self,
        sam2_model: SAM2Base,
        codebook_size: int = 256,
        codebook_depth: int = 2,
        feature_cache_size: int = 16,
        decode_chunk_size: int = 32,
    ) -> None:
        super().__init__()
        from sam2.modeling.sam.transformer import TwoWayTransformer

        hidden_dim = sam2_model.sam_prompt_embed_dim
        # Hyper-parameters hard-coded in the original (same as the SAM 2 mask decoder's transformer).
        sam2_model.sam_mask_encoder = MaskEncoder(
            TwoWayTransformer(depth=2, embedding_dim=hidden_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=hidden_dim,
            num_mask_tokens=1,
        )
        self.model = _VQSAM2Body(sam2_model)
        # With one mask token the original's concate/deconcate projections are identities: latent = hidden dim.
        self.quantizer = ResidualQuantizer(codebook_size, hidden_dim, codebook_depth)
        self.feature_cache_size = feature_cache_size
        self.decode_chunk_size = decode_chunk_size
        self.encoder_passes = 0
        self.decoder_passes = 0
        self.memory_modules_dropped = False
        self._cache: OrderedDict[tuple[str, str], _ImageFeatures] = OrderedDict()
        self.eval()

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_config(cls, sam2_config: str | Path = DEFAULT_SAM2_CONFIG, device: str | torch.device = "cpu", **kwargs):
        """Build a tokenizer with freshly initialised (random) weights.

        Args:
            sam2_config (`str` or `Path`, *optional*, defaults to `DEFAULT_SAM2_CONFIG`):
                a sam2 hydra YAML: a file path, a name in `samtok_rl/configs` (e.g. `"sam2_micro.yaml"`) or a
                config packaged with sam2 (e.g. `"configs/sam2.1/sam2.1_hiera_l.yaml"`).
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): target device.
            **kwargs: forwarded to the constructor (`feature_cache_size`, `decode_chunk_size`, ...).

        Returns:
            `MaskTokenizer` in eval mode.
        """
        return cls(_build_sam2_base(sam2_config), **kwargs).to(device)

    @classmethod
    def from_files(
        cls,
        sam2_config: str | Path,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        drop_memory_modules: bool = False,
        **kwargs,
    ) -> MaskTokenizer:
        """Build from a sam2 YAML and load a checkpoint strictly.

        Args:
            sam2_config (`str` or `Path`): see `from_config`.
            checkpoint (`str` or `Path`):
                flat state dict in the released layout, `.pth` (loaded with `weights_only=True`) or `.safetensors`.
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): target device.
            drop_memory_modules (`bool`, *optional*, defaults to `False`):
                after the strict load, delete SAM 2's memory attention and memory encoder, which the tokenizer never
                runs (see `drop_memory_modules`).
            **kwargs: forwarded to the constructor.

        Returns:
            `MaskTokenizer` in eval mode.

        Raises:
            `CheckpointMismatchError`: the checkpoint's keys or shapes differ from the model's; the message lists
                the missing, unexpected and mis-shaped keys.
        """
        checkpoint = Path(checkpoint)
        tokenizer = cls(_build_sam2_base(sam2_config), **kwargs)
        tokenizer.load_checkpoint_state(_load_state_dict_file(checkpoint), source=str(checkpoint))
        if drop_memory_modules:
            tokenizer.drop_memory_modules()
        return tokenizer.to(device)

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        device: str | torch.device = "cpu",
        sam2_config: str | Path = DEFAULT_SAM2_CONFIG,
        drop_memory_modules: bool = False,
        **kwargs,
    ) -> MaskTokenizer:
        """Load the tokenizer of a SAMTok model folder or Hub repository.

        The SAM 2 base checkpoint (`sam2.1_hiera_large.pt`) is not needed: the tokenizer checkpoint holds every
        weight.

        Args:
            name_or_dir (`str` or `Path`):
                a local folder holding `mask_tokenizer_256x2.pth`, a checkpoint file, or a Hub repository id such
                as `"zhouyik/Qwen3-VL-8B-SAMTok"` (downloaded with `huggingface_hub.hf_hub_download`).
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): target device.
            sam2_config (`str` or `Path`, *optional*, defaults to the hiera-L config): see `from_config`.
            drop_memory_modules (`bool`, *optional*, defaults to `False`): see `from_files`.
            **kwargs: forwarded to the constructor.

        Returns:
            `MaskTokenizer` in eval mode.
        """
        path = Path(name_or_dir)
        if path.is_dir():
            checkpoint = path / CHECKPOINT_NAME
            if not checkpoint.is_file():
                raise FileNotFoundError(f"{path} has no {CHECKPOINT_NAME}")
        elif path.is_file():
            checkpoint = path
        else:
            checkpoint = Path(hf_hub_download(repo_id=str(name_or_dir), filename=CHECKPOINT_NAME))
        return cls.from_files(
            sam2_config, checkpoint, device=device, drop_memory_modules=drop_memory_modules, **kwargs
        )

    def load_checkpoint_state(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load a flat state dict strictly, with an error that names every mismatching key.

        Args:
            state_dict (`dict[str, torch.Tensor]`): released-layout state dict.
            source (`str`, *optional*): where it came from, for the error message.

        Raises:
            `CheckpointMismatchError`: missing, unexpected or mis-shaped keys.
        """
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mis_shaped = sorted(
            f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
            for k in set(expected) & set(state_dict)
            if state_dict[k].shape != expected[k].shape
        )
        if missing or unexpected or mis_shaped:
            problems = []
            if missing:
                problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
            if unexpected:
                problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
            if mis_shaped:
                problems.append(f"shape mismatches ({len(mis_shaped)}): {_format_keys(mis_shaped)}")
            raise CheckpointMismatchError(f"{source} does not match the mask tokenizer: " + "; ".join(problems))
        self.load_state_dict(state_dict, strict=True)
        self.clear_cache()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the weights as a flat state dict in the released layout.

        Args:
            path (`str` or `Path`):
                `*.pth` (torch.save) or `*.safetensors`; any other path is taken as a folder and
                `mask_tokenizer_256x2.pth` is written inside it (the layout `from_pretrained` reads).

        Returns:
            `Path`: the file written.
        """
        if self.memory_modules_dropped:
            raise RuntimeError("cannot save the released layout: the memory modules were dropped")
        path = Path(path)
        if path.suffix not in (".pth", ".safetensors"):
            path = path / CHECKPOINT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if path.suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, path)
        return path

    def drop_memory_modules(self) -> None:
        """Delete SAM 2's memory attention and memory encoder (video-tracking modules the tokenizer never runs).

        Saves their memory (about 7.3M parameters for hiera-L). They must exist for strict loading, so drop them
        after loading; afterwards the state dict is no longer the released layout and `save_pretrained` refuses.
        """
        sam2 = self.model.sam2_model
        del sam2.memory_attention
        del sam2.memory_encoder
        self.memory_modules_dropped = True

    # ---------------------------------------------------------------------------------------------- image side

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebooks[0].weight.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        # The original wraps backbone, mask encoder and decoder in a CUDA bf16 autocast (a no-op on CPU).
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clear_cache(self) -> None:
        """Forget cached image features (call after changing weights in place)."""
        self._cache.clear()

    def _pixel_values(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) normalised float32 tensor, in the original's order of operations."""
        size = self.model.sam2_model.image_size
        pixels = torch.from_numpy(resize_image(rgb, size)).to(self.device).permute(2, 0, 1).float()  # (3, S, S)
        pixels = pixels / 255.0
        pixels = pixels - torch.tensor(_IMG_MEAN, dtype=pixels.dtype, device=pixels.device)[:, None, None]
        pixels = pixels / torch.tensor(_IMG_STD, dtype=pixels.dtype, device=pixels.device)[:, None, None]
        return pixels.unsqueeze(0)

    def _run_image_encoder(self, rgb: np.ndarray) -> _ImageFeatures:
        sam2 = self.model.sam2_model
        with self._autocast():
            backbone_out = sam2.forward_image(self._pixel_values(rgb))  # conv_s0/conv_s1 applied upstream
        self.encoder_passes += 1
        levels = backbone_out["backbone_fpn"][-sam2.num_feature_levels :]
        # directly_add_no_mem_embed: no memory is ever used, so the image embedding is top level + no_mem_embed.
        pix_feat = levels[-1] + sam2.no_mem_embed.view(1, -1, 1, 1)  # (1, C, h, w)
        high_res = list(levels[:-1]) if sam2.use_high_res_features_in_sam else None
        return _ImageFeatures(pix_feat=pix_feat, high_res=high_res, size=(rgb.shape[0], rgb.shape[1]))

    def _features(self, rgb: np.ndarray, key: str) -> _ImageFeatures:
        cache_key = (key, str(self.device))
        features = self._cache.get(cache_key)
        if features is None:
            features = self._run_image_encoder(rgb)
            self._cache[cache_key] = features
            while len(self._cache) > self.feature_cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cache_key)
        return features

    # ---------------------------------------------------------------------------------------------- encode

    @torch.no_grad()
    def embed_masks(self, image: ImageLike, masks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Continuous mask embeddings (the quantizer's input).

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): uint8 `(H, W, 3)` (grayscale/RGBA converted) or PIL image.
            masks (`np.ndarray` or `torch.Tensor` of shape `(K, H, W)`): binary masks at the image's size, bool or
                uint8 (non-zero is foreground).

        Returns:
            `torch.Tensor` of shape `(K, 256)`, float32.

        Raises:
            `ValueError`: a mask is empty (SAMTok needs its box), or the masks' size differs from the image's.
        """
        rgb = _as_rgb(image)
        height, width = rgb.shape[:2]
        masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (height, width):
            raise ValueError(
                f"masks must have shape (K, {height}, {width}) to match the image, got {tuple(masks.shape)}"
            )
        if masks.is_floating_point():
            bad = torch.nonzero(~torch.isfinite(masks).flatten(1).all(dim=1)).flatten().tolist()
            if bad:  # NaN != 0 is True: a NaN mask would silently encode as the full image
                raise ValueError(f"mask {bad[0]} holds NaN or infinite values; masks are 0/1 or bool")
        masks = masks.detach().cpu() != 0  # (K, H, W) bool
        empty = torch.nonzero(~masks.flatten(1).any(dim=1)).flatten().tolist()
        if empty:
            raise ValueError(
                f"mask {empty[0]} is empty: SAMTok encodes a mask together with its box, so it cannot encode it"
            )
        num = masks.shape[0]
        sam2 = self.model.sam2_model
        hidden_dim = sam2.sam_prompt_embed_dim
        if num == 0:
            return torch.zeros(0, hidden_dim, device=self.device)
        features = self._features(rgb, _image_key(rgb))

        # Box prompt: normalised xyxy (x2/y2 = last foreground index) scaled to the model input, given as two points
        # labelled 2 and 3; with boxes=None the prompt encoder appends the padding point, as in the original.
        boxes = masks_to_boxes(masks) / torch.tensor([width, height, width, height], dtype=torch.float32)  # (K, 4)
        coords = (boxes.reshape(-1, 2, 2) * sam2.image_size).to(self.device)  # (K, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int32, device=self.device).repeat(num, 1)  # (K, 2)
        mask_prompt = F.interpolate(
            masks.to(self.device).float().unsqueeze(1),
            size=sam2.sam_prompt_encoder.mask_input_size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )  # (K, 1, 256, 256) soft values in [0, 1]
        sparse, dense = sam2.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        with self._autocast():
            tokens = sam2.sam_mask_encoder(
                image_embeddings=features.pix_feat.expand(num, -1, -1, -1),
                image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )  # (K, 1, C)
        return tokens.reshape(num, -1).float()

    @torch.no_grad()
    def encode(self, image: ImageLike, masks: np.ndarray | torch.Tensor) -> np.ndarray:
        """Tokenize masks of one image into per-level codes.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): uint8 `(H, W, 3)` (grayscale/RGBA converted) or PIL image.
            masks (`np.ndarray` or `torch.Tensor` of shape `(K, H, W)`): binary masks at the image's size.

        Returns:
            `np.ndarray` of shape `(K, 2)`, int64: per-level codes in `[0, 256)` (no token offsets).

        Raises:
            `ValueError`: a mask is empty (the message names its index) or has the wrong size.
        """
        embeddings = self.embed_masks(image, masks)  # (K, C) float32
        return self.quantizer.quantize(embeddings).cpu().numpy()

    # ---------------------------------------------------------------------------------------------- decode

    def _decode_rows(self, features: _ImageFeatures, codes: torch.Tensor) -> torch.Tensor:
        """Mask-decoder logits for code rows of one image.

        Args:
            features (`_ImageFeatures`): the image's backbone features.
            codes (`torch.Tensor` of shape `(N, depth)`, int64): validated per-level codes.

        Returns:
            `torch.Tensor` of shape `(N, 1, 256, 256)`, float32: the IoU-argmax candidate of the multimask output.
        """
        sam2 = self.model.sam2_model
        code_embed = self.quantizer.embed_codes(codes)  # (N, C)
        multimask = sam2._use_multimask(is_init_cond_frame=True, point_inputs=None)
        outputs = [torch.zeros(0, 1, *sam2.sam_prompt_encoder.mask_input_size, device=self.device)]
        for start in range(0, codes.shape[0], self.decode_chunk_size):
            embed = code_embed[start : start + self.decode_chunk_size]
            num = embed.shape[0]
            with self._autocast():
                # No point prompt: one (0, 0) point labelled -1, plus the padding point, as `_forward_sam_heads`.
                points = torch.zeros(num, 1, 2, device=self.device)
                labels = -torch.ones(num, 1, dtype=torch.int32, device=self.device)
                sparse, dense = sam2.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
                # SAMTok's injection: the code embedding is one extra sparse prompt token.
                sparse = torch.cat([sparse, embed.unsqueeze(1)], dim=1)  # (n, 3, C)
                # Expanded views, not copies: the decoder only reads the image features (adds, convs).
                masks, ious, _, _ = sam2.sam_mask_decoder(
                    image_embeddings=features.pix_feat.expand(num, -1, -1, -1),
                    image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask,
                    repeat_image=False,
                    high_res_features=(
                        None if features.high_res is None else [h.expand(num, -1, -1, -1) for h in features.high_res]
                    ),
                )
            # The object score is ignored on purpose: SAMTok disables SAM 2's NO_OBJ_SCORE masking.
            masks = masks.float()  # (n, M, 256, 256)
            best = torch.argmax(ious, dim=-1) if multimask else torch.zeros(num, dtype=torch.long, device=self.device)
            outputs.append(masks[torch.arange(num, device=self.device), best].unsqueeze(1))
            self.decoder_passes += num
        return torch.cat(outputs)

    @torch.no_grad()
    def decode_logits(self, image: ImageLike, codes: object) -> torch.Tensor:
        """Low-resolution mask logits for code pairs of one image.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): uint8 `(H, W, 3)` (grayscale/RGBA converted) or PIL image.
            codes (array-like of shape `(N, 2)`): per-level codes in `[0, 256)`; -1 (missing) decodes as that
                level's code 0, like the original. The caller's array is not modified.

        Returns:
            `torch.Tensor` of shape `(N, 1, 256, 256)`, float32, on the model's device.

        Raises:
            `ValueError`: a code is out of range (the message names the value).
        """
        rgb = _as_rgb(image)
        codes = _as_codes(codes, self.quantizer.codebook_size, self.quantizer.codebook_depth)  # (N, 2) int64
        features = self._features(rgb, _image_key(rgb))
        return self._decode_rows(features, torch.from_numpy(codes).to(self.device))

    @torch.no_grad()
    def decode(self, image: ImageLike, codes: object) -> np.ndarray:
        """Decode code pairs of one image into binary masks at the image's size.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): uint8 `(H, W, 3)` (grayscale/RGBA converted) or PIL image.
            codes (array-like of shape `(N, 2)`): per-level codes; see `decode_logits`.

        Returns:
            `np.ndarray` of shape `(N, H, W)`, bool: bilinear upsampling of the logits, then `logits > 0.5`.
        """
        return self.decode_batch([(image, codes)])[0]

    @torch.no_grad()
    def decode_batch(self, items: Sequence[tuple[ImageLike, object]]) -> list[np.ndarray]:
        """Decode many (image, codes) items at once, e.g. every completion of a GRPO batch.

        The image encoder runs once per distinct image (by content; cached across calls), a code pair repeated on
        the same image is decoded once (-1 and 0 count as the same code), and the mask decoder runs batched over
        all remaining pairs.

        Args:
            items (`Sequence[tuple[image, codes]]`): images as in `decode`, codes of shape `(N_i, 2)` (may be empty).

        Returns:
            `list[np.ndarray]`: one bool array `(N_i, H_i, W_i)` per item.
        """
        rgbs = [_as_rgb(image) for image, _ in items]
        item_codes = [
            _as_codes(codes, self.quantizer.codebook_size, self.quantizer.codebook_depth) for _, codes in items
        ]
        keys = [_image_key(rgb) for rgb in rgbs]
        # Distinct images in first-seen order; features are held here for the whole call, whatever the LRU evicts.
        # An item without codes needs no image features.
        image_slot: dict[str, int] = {}
        features: list[_ImageFeatures] = []
        for rgb, key, codes in zip(rgbs, keys, item_codes):
            if len(codes) and key not in image_slot:
                image_slot[key] = len(features)
                features.append(self._features(rgb, key))

        # Unique effective code pairs per image (-1 and 0 decode identically).
        unique_rows: list[dict[tuple[int, ...], int]] = [{} for _ in features]
        item_rows = []  # per item: (image slot, row index within that image's unique pairs) per code pair
        for key, codes in zip(keys, item_codes):
            slot = image_slot.get(key, -1)  # -1 only for items without codes
            effective = np.where(codes == -1, 0, codes)
            item_rows.append(
                [(slot, unique_rows[slot].setdefault(tuple(p), len(unique_rows[slot]))) for p in effective.tolist()]
            )

        masks_by_image = []
        for feats, rows in zip(features, unique_rows):
            codes = torch.tensor(list(rows), dtype=torch.long, device=self.device).reshape(len(rows), -1)
            logits = self._decode_rows(feats, codes)  # (u, 1, 256, 256)
            # The original's post-processing: bilinear to the image's size, then a threshold on the logits.
            upsampled = F.interpolate(logits, size=feats.size, mode="bilinear", align_corners=False)  # (u, 1, H, W)
            masks_by_image.append((upsampled[:, 0] > MASK_THRESHOLD).cpu().numpy())

        results = []
        for rgb, rows in zip(rgbs, item_rows):
            if rows:
                results.append(np.stack([masks_by_image[slot][row] for slot, row in rows]))
            else:
                results.append(np.zeros((0, *rgb.shape[:2]), dtype=bool))
        return results
