"""Attentive fusion of the visual modalities, aligned to the POI text (MuseCL).

For each available visual modality m of a region (remote tiles, street views) with embedding
e_m (layer-normalised, so that no modality wins by scale alone, then a per-modality linear map
that starts as the identity):

    u_m     = tanh(W e_m + b)
    alpha_m = softmax over the region's *available* modalities of (u_m . u_w)
    e_image = sum_m alpha_m e_m

A missing modality is masked out of the softmax (its weight is exactly 0), never fed as
zeros. Training pulls e_image toward the region's projected text embedding with an in-batch
InfoNCE loss (see ``training.losses``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VISUAL = ("remote", "street")


class AttentiveFusion(nn.Module):
    """Fuses ``len(modalities)`` d-dim embeddings per region; projects text to d dims."""

    def __init__(self, dim: int = 128, text_dim: int = 384, modalities: tuple[str, ...] = VISUAL):
        super().__init__()
        self.modalities = modalities
        maps = [nn.Linear(dim, dim) for _ in modalities]
        for lin in maps:
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.inputs = nn.ModuleList(maps)
        self.attn = nn.Linear(dim, dim)  # W and b
        self.context = nn.Parameter(torch.empty(dim))  # u_w
        nn.init.normal_(self.context, std=dim**-0.5)
        self.text_proj = nn.Linear(text_dim, dim)

    def forward(self, emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse.

        Args:
            emb: (B, M, d) modality embeddings (rows of missing modalities are ignored).
            mask: (B, M) bool, True where the region has that modality.

        Returns:
            (e_image (B, d), alpha (B, M)); alpha is exactly 0 where mask is False.

        Raises:
            ValueError: a region has none of the modalities.
        """
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a region has none of the visual modalities; it cannot be fused")
        normed = nn.functional.layer_norm(emb, emb.shape[-1:])
        e = torch.stack([f(normed[:, i]) for i, f in enumerate(self.inputs)], dim=1)
        u = torch.tanh(self.attn(e))
        scores = (u @ self.context).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        return (alpha.unsqueeze(-1) * e).sum(1), alpha

    def text(self, text_emb: Tensor) -> Tensor:
        """Project a region's text embedding (mean of its POIs') to d dims."""
        return self.text_proj(text_emb)
