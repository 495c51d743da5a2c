"""Contrastive samples for one visual modality.

A triplet is (an image of anchor region i, an image of a region j among i's top-k most
similar regions, j != i, an image of a region outside i's top-k and not i). A pair is
(an image of i, a positive image): with probability ``same_region`` another image of i
itself when i has several (two views of one place), else an image of a region among i's
top-k. Regions without images of the modality are never drawn; an anchor with no usable
positive is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from musecl_store.errors import InputError


class TripletSampler:
    """Draws triplets or pairs of image indices.

    Args:
        neighbours: (n_regions, k) top-k neighbour indices, -1 for none.
        images_of: per region, the indices of its images of this modality.
    """

    def __init__(self, neighbours: np.ndarray, images_of: Sequence[Sequence[int]]):
        self.neighbours = neighbours
        self.images_of = [np.asarray(x, dtype=np.int64) for x in images_of]
        self.has = np.array([len(x) > 0 for x in self.images_of])
        self.with_images = np.flatnonzero(self.has)
        self.positives = [[int(j) for j in row if j >= 0 and self.has[j]] for row in neighbours]

    def anchors(self, regions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Regions usable as anchors: images, and at least one neighbour with images."""
        pool = np.arange(len(self.images_of)) if regions is None else np.asarray(regions)
        return np.array([i for i in pool if self.has[i] and self.positives[i]], dtype=np.int64)

    def sample(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One triplet per anchor region: an (n, 3) array of image indices."""
        out = np.empty((len(anchors), 3), dtype=np.int64)
        n_with = len(self.with_images)
        for t, i in enumerate(anchors):
            j = self.positives[i][int(rng.integers(len(self.positives[i])))]
            banned = set(self.neighbours[i][self.neighbours[i] >= 0].tolist()) | {int(i)}
            if n_with <= sum(1 for b in banned if self.has[b]):
                raise InputError(
                    "too few regions with images to draw negatives outside the top-k; "
                    "lower top_k in the config"
                )
            while True:
                neg = int(self.with_images[int(rng.integers(n_with))])
                if neg not in banned:
                    break
            out[t] = [self._image(i, rng), self._image(j, rng), self._image(neg, rng)]
        return out

    def sample_pairs(
        self, anchors: np.ndarray, rng: np.random.Generator, same_region: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """One (anchor image, positive image) pair per anchor region.

        Returns:
            (pairs (n, 2) image indices, regions (n, 2): the anchor and positive regions).
        """
        pairs = np.empty((len(anchors), 2), dtype=np.int64)
        regions = np.empty((len(anchors), 2), dtype=np.int64)
        for t, i in enumerate(anchors):
            own = self.images_of[i]
            if len(own) > 1 and rng.random() < same_region:
                a, b = rng.choice(len(own), size=2, replace=False)
                pairs[t] = [own[a], own[b]]
                regions[t] = [i, i]
                continue
            j = self.positives[i][int(rng.integers(len(self.positives[i])))]
            pairs[t] = [self._image(i, rng), self._image(j, rng)]
            regions[t] = [i, j]
        return pairs, regions

    def related(self, regions: np.ndarray) -> np.ndarray:
        """(n, n) bool: row b's anchor region has column c's positive region among its top-k
        or is that region (not to be used as a negative for b)."""
        anchors, pos = regions[:, 0], regions[:, 1]
        top = self.neighbours[anchors]  # (n, k)
        hit = (top[:, :, None] == pos[None, None, :]).any(axis=1)
        return hit | (anchors[:, None] == pos[None, :]) | (anchors[:, None] == anchors[None, :])

    def _image(self, region: int, rng: np.random.Generator) -> int:
        imgs = self.images_of[region]
        return int(imgs[int(rng.integers(len(imgs)))])
