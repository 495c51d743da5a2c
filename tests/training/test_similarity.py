"""The two similarities against hand-computed values, and the sparse top-k."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from training.similarity import cosine_topk, mobility_profiles, poi_profiles


def test_poi_similarity_by_hand() -> None:
    # region 0: 2 cafes, 2 bars -> p = (.5, .5, 0); region 1: 1 cafe -> (1, 0, 0);
    # region 2: 1 bar, 1 school -> (0, .5, .5); region 3: no POIs
    prof = poi_profiles(4, [0, 0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 0, 1, 2], 3)
    np.testing.assert_allclose(prof.toarray(), [[0.5, 0.5, 0], [1, 0, 0], [0, 0.5, 0.5], [0, 0, 0]])
    idx, sim = cosine_topk(prof, 2)
    # cos(p0, p1) = .5 / (sqrt(.5) * 1) = 0.7071; cos(p0, p2) = .25 / (sqrt(.5) sqrt(.5)) = 0.5
    assert idx[0].tolist() == [1, 2]
    np.testing.assert_allclose(sim[0], [np.sqrt(0.5), 0.5], rtol=1e-6)
    assert idx[1].tolist() == [0, -1]  # cos(p1, p2) = 0: not a neighbour
    assert idx[3].tolist() == [-1, -1]  # no POIs, no neighbours


def test_mobility_similarity_by_hand() -> None:
    od = sparse.csr_matrix(np.array([[0, 2, 0], [1, 0, 1], [0, 0, 0]], dtype=float))
    inflow = np.asarray(od.sum(axis=0)).ravel()  # (1, 2, 1)
    outflow = np.asarray(od.sum(axis=1)).ravel()  # (2, 2, 0)
    flows = mobility_profiles(inflow, outflow, od, use_od=False).toarray()
    np.testing.assert_allclose(flows, [[1 / 3, 2 / 3], [0.5, 0.5], [1, 0]])
    v = mobility_profiles(inflow, outflow, od, use_od=True).toarray()
    # v_0 = (1/3, 2/3 | row 0 / out_0 = (0, 1, 0) | col 0 / in_0 = (0, 1, 0))
    np.testing.assert_allclose(v[0], [1 / 3, 2 / 3, 0, 1, 0, 0, 1, 0])
    np.testing.assert_allclose(v[2], [1, 0, 0, 0, 0, 0, 1, 0])
    idx, sim = cosine_topk(v, 2)
    expect = v[0] @ v[2] / (np.linalg.norm(v[0]) * np.linalg.norm(v[2]))
    j = idx[0].tolist().index(2)
    assert sim[0, j] == pytest.approx(expect, rel=1e-6)


def test_topk_never_includes_itself_and_is_sorted() -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((300, 20))
    idx, sim = cosine_topk(sparse.csr_matrix(dense), 7)
    normed = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    full = normed @ normed.T
    np.fill_diagonal(full, -np.inf)
    for i in range(300):
        assert i not in idx[i]
        assert np.all(np.diff(sim[i]) <= 1e-7)
        np.testing.assert_allclose(
            sorted(sim[i], reverse=True), np.sort(full[i])[::-1][:7], rtol=1e-5
        )
