"""Approximate indexes at 100k vectors: recall@10 against the exact index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from musecl_store.search.index import IndexOptions, RegionIndex

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


def test_single_query_fast_path_equals_faiss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One or two queries skip FAISS for numpy's matrix-vector product; the answers are the
    same as FAISS's, also after rows are replaced in place."""
    from musecl_store.search.index import Stamp

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    faiss.normalize_L2(x)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
    ids = rng.permutation(100_000)[:5000].astype(np.int64)
    index.add_with_ids(x, ids)
    stamp = Stamp(1, "fused", 1, 5000, 32, "flat", 1)
    idx = RegionIndex(tmp_path, index, stamp, IndexOptions())
    q = rng.standard_normal((2, 32)).astype(np.float32)
    for rows in (q[:1], q):
        fast = idx.search_snapshot(rows, 7)
        slow = index.search(rows / np.linalg.norm(rows, axis=1, keepdims=True), 7)
        assert np.array_equal(fast[1], slow[1])
        assert np.allclose(fast[0], slow[0], atol=1e-6)
    moved = rng.standard_normal((10, 32)).astype(np.float32)
    faiss.normalize_L2(moved)
    idx._flat = None  # what refresh does before it replaces rows
    index.remove_ids(ids[:10])
    index.add_with_ids(moved, ids[:10])
    fast = idx.search_snapshot(moved[:1], 1)
    assert fast[1][0, 0] == ids[0] and fast[0][0, 0] > 0.999
