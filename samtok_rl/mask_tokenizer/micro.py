"""The seeded random micro tokenizer (CPU demo and tests) and the weight recipe that makes random weights useful."""

from __future__ import annotations

import torch

from samtok_rl.mask_tokenizer.checkpoint import MICRO_SAM2_CONFIG, _build_sam2_base
from samtok_rl.mask_tokenizer.tokenizer import MaskTokenizer


def _make_random_weights_informative(tokenizer: MaskTokenizer, generator: torch.Generator) -> None:
    """Apply the golden reference data's weight recipe so random weights give non-degenerate masks and codes.

    Default initialisation leaves LayerNorms and position embeddings constant (so they have no effect) and keeps
    the decoded logits below the 0.5 threshold. The recipe (the one the golden reference outputs of the original code
    were made with): constant multi-element float parameters get N(0, 0.1^2) noise, then a few prompt/decoder
    tensors are rescaled.
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
