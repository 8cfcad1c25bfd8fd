"""Image inputs of the tokenizer: RGB conversion, SAMTok's PIL bicubic resize, the feature cache's content key."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from samtok_rl.files import to_rgb


ImageLike = np.ndarray | Image.Image  # (H, W, 3) uint8 array (grayscale/RGBA converted) or PIL image

_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)


def _as_rgb(image: ImageLike) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB array from a PIL image (any mode `samtok_rl.files.to_rgb` reads, 16-bit by value) or a
    uint8 array (grayscale, RGB or RGBA)."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image, getattr(image, "filename", "") or f"a PIL image of mode {image.mode}"))
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
