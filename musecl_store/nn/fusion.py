"""Attentive fusion of a region's modalities.

``AttentiveFusion`` is the paper's module (MuseCL): it fuses the two visual embeddings
(remote tiles, street views). For each available modality m with embedding e_m
(layer-normalised, so that no modality wins by scale alone, then a per-modality linear map
that starts as the identity):

    u_m     = tanh(W e_m + b)
    alpha_m = softmax over the region's *available* modalities of (u_m . u_w)
    e_image = sum_m alpha_m e_m

Training pulls e_image toward the region's projected text embedding with an in-batch
InfoNCE loss (see ``training.losses``). The store keeps it as the ``fused_visual`` ablation.

``ModalityFusion`` is the product's ``fused`` vector: the same masked attention, over every
branch a region can have (``BRANCHES``): the two visual embeddings, the POI text, the POI
counts per category and in total, and the mobility volumes and flow pattern. Each branch
has its own small encoder to d dims (layer norm, linear, GELU, linear). A missing branch is
masked out of the softmax (its weight is exactly 0), never fed as zeros; the weights are
stored per region and say which evidence a region's vector rests on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VISUAL = ("remote", "street")
BRANCHES = ("remote", "street", "poi_text", "poi_counts", "mobility")


def _attend(attn: nn.Linear, context: Tensor, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked attention pooling of ``z`` (B, M, d): weights softmax over the available rows
    of tanh(W z + b) . u_w, exactly 0 where ``mask`` (B, M) is False; returns (pooled (B, d),
    weights (B, M))."""
    u = torch.tanh(attn(z))
    scores = (u @ context).masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(scores, dim=1)
    return (alpha.unsqueeze(-1) * z).sum(1), alpha


def _require_any(mask: Tensor, problem: str) -> None:
    """Refuse a batch in which a region has nothing to fuse (its weights would be NaN)."""
    if not bool(mask.any(dim=1).all()):
        raise ValueError(problem)


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
        """Fuse ``emb`` (B, M, d), the modality embeddings, where ``mask`` (B, M) is True
        (the rows of missing modalities are ignored).

        Returns:
            (e_image (B, d), alpha (B, M)); alpha is exactly 0 where mask is False.

        Raises:
            ValueError: a region has none of the modalities.
        """
        _require_any(mask, "a region has none of the visual modalities; it cannot be fused")
        normed = nn.functional.layer_norm(emb, emb.shape[-1:])
        e = torch.stack([f(normed[:, i]) for i, f in enumerate(self.inputs)], dim=1)
        return _attend(self.attn, self.context, e, mask)

    def text(self, text_emb: Tensor) -> Tensor:
        """Project a region's text embedding (mean of its POIs') to d dims."""
        return self.text_proj(text_emb)


class _Branch(nn.Module):
    """One branch's encoder: standardise (the training city's column means and standard
    deviations, kept as buffers), linear, GELU, linear (input dims -> d). Per-column, not
    per-row normalisation: a row's level (how many POIs, how many trips) is information."""

    def __init__(self, d_in: int, dim: int):
        super().__init__()
        self.shift: Tensor
        self.scale: Tensor
        self.register_buffer("shift", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))
        self.net = nn.Sequential(nn.Linear(d_in, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.shift) / self.scale)

    @torch.no_grad()
    def set_normalisation(self, rows: Tensor) -> None:
        if len(rows) > 1:
            self.shift.copy_(rows.mean(0))
            self.scale.copy_(rows.std(0).clamp(min=1e-6))


class ModalityFusion(nn.Module):
    """Masked attentive fusion over every branch in ``BRANCHES`` (see the module docstring).

    Args:
        dims: input size of each branch, in ``BRANCHES`` order.
        dim: size of the fused vector.
    """

    def __init__(self, dims: tuple[int, ...], dim: int = 128):
        super().__init__()
        if len(dims) != len(BRANCHES):
            raise ValueError(f"need one input size per branch ({len(BRANCHES)}), not {dims}")
        self.dims = dims
        self.branches = nn.ModuleList([_Branch(d_in, dim) for d_in in dims])
        self.attn = nn.Linear(dim, dim)
        self.context = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.context, std=dim**-0.5)

    def set_normalisation(self, inputs: list[Tensor], mask: Tensor) -> None:
        """Standardise each branch with the rows (regions) that have it."""
        for i, (branch, x) in enumerate(zip(self.branches, inputs, strict=True)):
            assert isinstance(branch, _Branch)
            branch.set_normalisation(x[mask[:, i]])

    def forward(self, inputs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse ``inputs``, one (B, dims[m]) tensor per branch, where ``mask``
        (B, len(BRANCHES)) is True; as :meth:`AttentiveFusion.forward` otherwise (the fused
        vector and the weights; ``ValueError`` for a region without any branch)."""
        _require_any(mask, "a region has no evidence at all; it cannot be fused")
        z = torch.stack([f(x) for f, x in zip(self.branches, inputs, strict=True)], dim=1)
        z = torch.where(mask.unsqueeze(-1), z, 0.0)  # a missing branch's input is arbitrary
        return _attend(self.attn, self.context, z, mask)
