"""Approximate indexes at 100k vectors: recall@10 against the exact index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from musecl_store.index import IndexOptions, RegionIndex

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recall_at_10_is_at_least_0_95_at_100k(kind: str) -> None:
    # A Gaussian mixture (region embeddings cluster; isotropic noise is the unrealistic worst
    # case for graph and IVF indexes).
    rng = np.random.default_rng(0)
    n, d = 100_000, 128
    centres = rng.normal(size=(1000, d)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    faiss.normalize_L2(x)
    q = x[rng.choice(n, 300, replace=False)] + 0.05 * rng.normal(size=(300, d)).astype(np.float32)
    faiss.normalize_L2(q)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # region pks are not 0..n-1
    exact = RegionIndex._new_index("flat", x, IndexOptions())
    exact.add_with_ids(x, ids)
    approx = RegionIndex._new_index(kind, x, IndexOptions())
    approx.add_with_ids(x, ids)
    _, truth = exact.search(q, 10)
    _, found = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95, f"{kind} recall@10 = {recall:.3f}"
