"""The two MuseCL losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """mean(max(0, |a - p|_2 - |a - n|_2 + margin)): L2 distances, as in the paper."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


def info_nce(image: Tensor, text: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE between each region's fused image embedding and its text embedding.

    Region i's own text is the positive; the other regions' texts in the batch are the
    negatives (and symmetrically from text to image). Cosine similarities / temperature.
    """
    logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature
    target = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pair_info_nce(
    anchor: Tensor, positive: Tensor, temperature: float, same: Tensor | None = None
) -> Tensor:
    """In-batch InfoNCE over (anchor, positive) pairs of L2-normalised embeddings.

    Anchor b's positive is row b of ``positive``; every other row is a negative, except where
    ``same[b, c]`` is True (c's positive is a known positive of b, or the same region): those
    would be false negatives and are left out of the softmax. Symmetric.
    """
    a = F.normalize(anchor, dim=1)
    p = F.normalize(positive, dim=1)
    logits = a @ p.T / temperature
    if same is not None:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
