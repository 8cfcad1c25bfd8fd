"""The modules SAMTok adds to SAM 2.1: the mask encoder and the 2-level residual quantizer.

Their parameter and buffer names are those of the released checkpoint, so it loads strictly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn


if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


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
