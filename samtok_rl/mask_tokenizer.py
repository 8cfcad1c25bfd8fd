"""SAMTok mask tokenizer (VQ-SAM2) built on PyPI `sam2`.

A mask plus its image becomes two integer codes (one per residual-quantizer level), and two codes plus the image
become a mask again. The SAM 2.1 parts (Hiera + FPN image encoder, prompt encoder, mask decoder) are upstream
`sam2` modules instantiated from a sam2 hydra YAML; this module adds only what SAMTok adds:

- `sam_mask_encoder`: an upstream `TwoWayTransformer` with one learned query, registered inside `SAM2Base` so the
  released key names (`model.sam2_model.sam_mask_encoder.*`) load strictly;
- a 2-level residual quantizer with 257-row codebooks (row 256 is an all-zero padding row) and the EMA buffers of
  the original, so the released state dict loads strictly;
- the decode path, which appends the summed code embedding as an extra sparse prompt token and, unlike upstream
  `SAM2Base._forward_sam_heads`, keeps the logits when the object score is <= 0.

Numerics follow the original `VQ_SAM2` exactly (see `shared/reference/samtok.md`): PIL bicubic square resize,
boxes from `masks_to_boxes / [W, H, W, H]` given as two points with labels 2/3, a missing code (-1) read as that
level's code 0, bilinear upsampling and `logits > 0.5`, fp32 on CPU and bf16 autocast on CUDA.

Importing this module does not import `sam2`: `import sam2` initialises Hydra globally, so it is deferred to the
moment a model is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


__all__ = [
    "CHECKPOINT_NAME",
    "DEFAULT_SAM2_CONFIG",
    "MICRO_SAM2_CONFIG",
    "CheckpointMismatchError",
    "MaskEncoder",
    "MaskTokenizer",
    "ResidualQuantizer",
    "VQCodebook",
    "build_micro_mask_tokenizer",
    "resize_image",
]

ImageLike = np.ndarray | Image.Image  # (H, W, 3) uint8 array (grayscale/RGBA converted) or PIL image

# The released SAMTok model folders ship the tokenizer under this name, next to the VLM weights.
CHECKPOINT_NAME = "mask_tokenizer_256x2.pth"
# Packaged with sam2; the original hard-codes exactly these SAM 2.1 hiera-L values.
DEFAULT_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
# Packaged with samtok_rl (samtok_rl/configs/); the micro architecture of the golden reference data.
MICRO_SAM2_CONFIG = "sam2_micro.yaml"

_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)
# The original's decode threshold is applied to the logits, not to a sigmoid (sigmoid > ~0.6225).
MASK_THRESHOLD = 0.5


class CheckpointMismatchError(RuntimeError):
    """A state dict does not match the model's keys or shapes."""


# --------------------------------------------------------------------------------------------------------------
# Modules SAMTok adds to SAM 2.1
# --------------------------------------------------------------------------------------------------------------


class MaskEncoder(nn.Module):
    """SAMTok's mask encoder: a two-way transformer with learned query tokens and no output heads.

    Registered as `SAM2Base.sam_mask_encoder`. Its tokens are `[mask_tokens ; sparse prompt]`, its image input is
    the image embedding plus the dense (mask) prompt embedding, and its output is the processed query tokens.

    Args:
        transformer (`nn.Module`):
            An upstream `sam2.modeling.sam.transformer.TwoWayTransformer` (depth 2, 8 heads, MLP 2048 in SAMTok).
        transformer_dim (`int`):
            Channel dimension of the tokens and of the image embedding.
        num_mask_tokens (`int`, *optional*, defaults to 1):
            Number of learned query tokens. The released tokenizer uses 1.
    """

    def __init__(self, transformer: nn.Module, transformer_dim: int, num_mask_tokens: int = 1) -> None:
        super().__init__()
        self.transformer = transformer
        self.transformer_dim = transformer_dim
        self.num_mask_tokens = num_mask_tokens
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Encode prompts against an image embedding.

        Args:
            image_embeddings (`torch.Tensor` of shape `(B, C, h, w)`): image embedding, one row per prompt.
            image_pe (`torch.Tensor` of shape `(1, C, h, w)`): `PromptEncoder.get_dense_pe()`.
            sparse_prompt_embeddings (`torch.Tensor` of shape `(B, P, C)`): point prompts.
            dense_prompt_embeddings (`torch.Tensor` of shape `(B, C, h, w)`): mask prompts.

        Returns:
            `torch.Tensor` of shape `(B, num_mask_tokens, C)`: the processed query tokens.
        """
        batch = sparse_prompt_embeddings.size(0)
        output_tokens = self.mask_tokens.weight.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # (B, num_mask_tokens + P, C)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, batch, dim=0)
        hs, _ = self.transformer(src, pos_src, tokens)
        return hs[:, : self.num_mask_tokens, :]


class VQCodebook(nn.Embedding):
    """One residual-quantizer level: `codebook_size` searchable rows plus an all-zero padding row.

    The weights are EMA-trained in the original, so they carry no gradient, and the EMA buffers
    (`cluster_size_ema`, `embed_ema`) are kept only so that released checkpoints load strictly; inference never
    updates them.

    Args:
        codebook_size (`int`): number of searchable rows (256 in the release).
        embedding_dim (`int`): code embedding size (256 in the release).
    """

    def __init__(self, codebook_size: int, embedding_dim: int) -> None:
        super().__init__(codebook_size + 1, embedding_dim, padding_idx=codebook_size)
        self.codebook_size = codebook_size
        self.weight.requires_grad_(False)
        self.register_buffer("cluster_size_ema", torch.zeros(codebook_size))
        self.register_buffer("embed_ema", self.weight[:-1].detach().clone())

    def nearest(self, inputs: torch.Tensor) -> torch.Tensor:
        """Index of the nearest searchable row for each input row.

        Args:
            inputs (`torch.Tensor` of shape `(N, D)`): vectors to quantize.

        Returns:
            `torch.Tensor` of shape `(N,)`, int64: row indices in `[0, codebook_size)`.
        """
        # Same expression as the original (||r||^2 + ||e||^2 - 2 r.e via addmm), so near-ties break identically.
        codebook_t = self.weight[:-1].t().contiguous().to(inputs.dtype)  # (D, S)
        distances = torch.addmm(
            inputs.pow(2.0).sum(dim=1, keepdim=True) + codebook_t.pow(2.0).sum(dim=0, keepdim=True),
            inputs,
            codebook_t,
            alpha=-2.0,
        )  # (N, S)
        return distances.argmin(dim=-1)


class ResidualQuantizer(nn.Module):
    """Residual vector quantizer with one unshared `VQCodebook` per level (eval mode only).

    Args:
        codebook_size (`int`, *optional*, defaults to 256): searchable rows per level.
        latent_dim (`int`, *optional*, defaults to 256): embedding size.
        codebook_depth (`int`, *optional*, defaults to 2): number of levels.
    """

    def __init__(self, codebook_size: int = 256, latent_dim: int = 256, codebook_depth: int = 2) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_depth = codebook_depth
        self.codebooks = nn.ModuleList(VQCodebook(codebook_size, latent_dim) for _ in range(codebook_depth))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy residual quantization.

        Args:
            x (`torch.Tensor` of shape `(N, D)`): continuous mask embeddings.

        Returns:
            `torch.Tensor` of shape `(N, codebook_depth)`, int64: per-level codes.
        """
        residual = x.detach().clone()
        codes = []
        for codebook in self.codebooks:
            code = codebook.nearest(residual)  # (N,) int64
            residual = residual - codebook(code)
            codes.append(code)
        return torch.stack(codes, dim=-1)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the looked-up rows of every level.

        A code of -1 reads as row 0 of its level. The original `embed_code` overwrites -1 with 0 in place before it
        tests for -1, so it never skips a level; the golden data pins that behaviour. Unlike the original, the
        caller's tensor is left untouched.

        Args:
            codes (`torch.Tensor` of shape `(N, codebook_depth)`, int64): per-level codes in `[-1, codebook_size)`.

        Returns:
            `torch.Tensor` of shape `(N, D)`: code embeddings.
        """
        codes = codes.masked_fill(codes == -1, 0)
        embeds = [codebook(codes[:, level]) for level, codebook in enumerate(self.codebooks)]
        return torch.stack(embeds, dim=1).sum(dim=1)  # (N, D), same reduction as the original


class _VQSAM2Body(nn.Module):
    """Holds `SAM2Base` under the attribute name that gives the released `model.sam2_model.*` key prefix."""

    def __init__(self, sam2_model: SAM2Base) -> None:
        super().__init__()
        self.sam2_model = sam2_model


# --------------------------------------------------------------------------------------------------------------
# Image and checkpoint helpers
# --------------------------------------------------------------------------------------------------------------


def _as_rgb(image: ImageLike) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB array from a PIL image or a uint8 array (grayscale, RGB or RGBA)."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 4)):
        # PIL's own conversions: grayscale is replicated, RGBA drops alpha (no compositing).
        channels_last = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        return np.asarray(Image.fromarray(channels_last).convert("RGB"))
    raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def resize_image(image: ImageLike, size: int = 1024) -> np.ndarray:
    """Square-resize an image exactly as SAMTok's `DirectResize` does.

    PIL bicubic to `size x size`, ignoring the aspect ratio, without padding. Upstream SAM 2 resizes with
    torchvision bilinear instead, which gives different pixels.

    Args:
        image (`np.ndarray` or `PIL.Image.Image`): uint8 `(H, W, 3)` array (grayscale/RGBA converted) or PIL image.
        size (`int`, *optional*, defaults to 1024): output side.

    Returns:
        `np.ndarray` of shape `(size, size, 3)`, uint8.

    Example:

    >>> resize_image(np.zeros((400, 600, 3), np.uint8)).shape
    (1024, 1024, 3)
    """
    pil = Image.fromarray(_as_rgb(image))
    return np.array(pil.resize((size, size), resample=Image.Resampling.BICUBIC))


def _image_key(rgb: np.ndarray) -> str:
    """Content hash of an RGB image (shape included, so a reshaped buffer never collides)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


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


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Flat tensor dict from a `.pth` (weights_only) or `.safetensors` file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
    return state


def _format_keys(keys: Sequence[str], limit: int = 50) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... and {len(keys) - limit} more" if len(keys) > limit else shown


def _read_config(sam2_config: str | Path):
    """Load a sam2 YAML given as a file path, a name in `samtok_rl/configs`, or a name packaged with sam2."""
    from omegaconf import OmegaConf

    path = Path(sam2_config)
    if path.is_file():
        return OmegaConf.load(path)
    name = str(sam2_config)
    # Finding a resource of the sam2 package imports sam2 (which initialises Hydra): this runs at build time only.
    roots = [importlib.resources.files("samtok_rl") / "configs", importlib.resources.files("sam2")]
    candidates = [root.joinpath(*name.split("/")) for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return OmegaConf.create(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(
        f"sam2 config {name!r} not found; looked at: {', '.join(str(c) for c in [path, *candidates])}"
    )


def _build_sam2_base(sam2_config: str | Path) -> SAM2Base:
    """Instantiate `SAM2Base` from a sam2 hydra YAML (path, `samtok_rl/configs` name or sam2 packaged name)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = _read_config(sam2_config)
    OmegaConf.resolve(cfg)
    # Instantiate the model node directly rather than through sam2.build_sam2: build_sam2 would switch on
    # dynamic_multimask_via_stability (apply_postprocessing), which the original tokenizer does not use.
    return instantiate(cfg.model, _recursive_=True)


@dataclass
class _ImageFeatures:
    """Backbone outputs for one image, batch size 1."""

    pix_feat: torch.Tensor  # (1, C, h, w): top FPN level + no_mem_embed
    high_res: list[torch.Tensor] | None  # [(1, C/8, 4h, 4w), (1, C/4, 2h, 2w)] after conv_s0/conv_s1
    size: tuple[int, int]  # original (H, W)


# --------------------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------------------


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
            from huggingface_hub import hf_hub_download

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
            from safetensors.torch import save_file

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
        from torchvision.ops import masks_to_boxes

        rgb = _as_rgb(image)
        height, width = rgb.shape[:2]
        masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (height, width):
            raise ValueError(
                f"masks must have shape (K, {height}, {width}) to match the image, got {tuple(masks.shape)}"
            )
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


# --------------------------------------------------------------------------------------------------------------
# Random micro tokenizer (CPU demo and tests)
# --------------------------------------------------------------------------------------------------------------


def _make_random_weights_informative(tokenizer: MaskTokenizer, generator: torch.Generator) -> None:
    """Apply the golden reference data's weight recipe so random weights give non-degenerate masks and codes.

    Default initialisation leaves LayerNorms and position embeddings constant (so they have no effect) and keeps
    the decoded logits below the 0.5 threshold. As in `shared/golden/vq_sam2_micro_a`: constant multi-element
    float parameters get N(0, 0.1^2) noise, then a few prompt/decoder tensors are rescaled.
    """
    with torch.no_grad():
        for param in tokenizer.parameters():
            if param.is_floating_point() and param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        sam2 = tokenizer.model.sam2_model
        for embedding in [*sam2.sam_prompt_encoder.point_embeddings, sam2.sam_prompt_encoder.not_a_point_embed]:
            embedding.weight.mul_(0.25)
        sam2.sam_mask_encoder.mask_tokens.weight.mul_(0.25)
        sam2.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(3.0)
        for mlp in sam2.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(2.5)
            mlp.layers[-1].bias.mul_(2.5)
        for codebook in tokenizer.quantizer.codebooks:
            codebook.embed_ema.copy_(codebook.weight[:-1])


def build_micro_mask_tokenizer(seed: int = 0, device: str | torch.device = "cpu", **kwargs) -> MaskTokenizer:
    """A seeded random tokenizer with the micro SAM 2 architecture of the golden reference data.

    Fast on CPU (a fraction of a second per image); used by the CPU demo and by tests when the golden folder is
    absent. The weights are random but informative (see `_make_random_weights_informative`): masks decode to
    image-dependent textured patterns, not to the input masks.

    Args:
        seed (`int`, *optional*, defaults to 0): weight seed; the global RNG state is left untouched.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): target device.
        **kwargs: forwarded to the `MaskTokenizer` constructor.

    Returns:
        `MaskTokenizer` in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = MaskTokenizer(_build_sam2_base(MICRO_SAM2_CONFIG), **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    _make_random_weights_informative(tokenizer, generator)
    return tokenizer.to(device)
