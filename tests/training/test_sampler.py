"""Triplets: never the anchor's own region as positive, never a negative from its top-k."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from training.sampler import TripletSampler
from training.similarity import cosine_topk


def test_sampler_respects_the_neighbourhoods() -> None:
    rng = np.random.default_rng(1)
    n, k = 80, 6
    neighbours, _ = cosine_topk(sparse.csr_matrix(rng.random((n, 5))), k)
    # 1-3 images per region, none for every fifth region
    images_of, owner = [], []
    for r in range(n):
        m = 0 if r % 5 == 0 else int(rng.integers(1, 4))
        images_of.append(list(range(len(owner), len(owner) + m)))
        owner.extend([r] * m)
    owner_arr = np.array(owner)
    sampler = TripletSampler(neighbours, images_of)
    anchors = sampler.anchors()
    assert all(r % 5 != 0 for r in anchors)
    tri = sampler.sample(np.repeat(anchors, 20), rng)
    a, p, q = owner_arr[tri[:, 0]], owner_arr[tri[:, 1]], owner_arr[tri[:, 2]]
    assert np.all(a == np.repeat(anchors, 20))
    assert np.all(p != a) and np.all(q != a)
    for ai, pi, qi in zip(a, p, q, strict=True):
        top = set(neighbours[ai][neighbours[ai] >= 0].tolist())
        assert pi in top
        assert qi not in top
    assert not np.isin(p, np.arange(0, n, 5)).any()  # regions without images never drawn
    assert not np.isin(q, np.arange(0, n, 5)).any()
