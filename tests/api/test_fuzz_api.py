"""Hostile query vectors through the facade, generated: property-based fuzzing (hypothesis) of
``Store.similar(vector=...)`` on a tiny store. It answers or raises a ``MuseclError`` that is a
``ValueError``, with a one-line message naming the vector.

Settings, shared strategies and fixtures: tests/fuzzing.py. Cases per test:

    test_store_similar_vector_fuzz ................. 150

A defect of ``musecl_store/api.py`` that this test found (point and vector values converted
before they were checked) is fixed and pinned by
``test_store_similar_refuses_non_numeric_vectors_with_a_project_error``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import musecl_store
from musecl_store.errors import MuseclError
from tests.fuzzing import assert_project_error, cases


@pytest.fixture(scope="module")
def tiny_api(tiny_store: tuple[str, Path]) -> Iterator[Any]:
    with musecl_store.open(tiny_store[0], index_dir=tiny_store[1]) as store:
        yield store


@cases(150)
@given(
    vector=st.one_of(
        st.lists(st.floats(), max_size=10),
        st.lists(st.floats(-1e3, 1e3), min_size=8, max_size=8),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int64]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8),
        ),
        st.sampled_from([[0.0] * 8, [1e39] * 8, [[0.5] * 8], [[0.5] * 4] * 2, [], [[]]]),
    )
)
def test_store_similar_vector_fuzz(tiny_api: Any, vector: Any) -> None:
    """Numeric vectors of any shape; non-numeric ones are an api.py bug (see
    test_store_similar_refuses_non_numeric_vectors_with_a_project_error)."""
    try:
        hits = tiny_api.similar("tiny", vector=vector, k=3)
    except MuseclError as exc:
        assert_project_error(exc, "vector")
        return
    assert 1 <= len(hits) <= 3 and hits.score.between(-1.0001, 1.0001).all()


@pytest.mark.parametrize("scale", [1e-310, 1e-30, 1.0, 1e37])
def test_a_vector_of_any_magnitude_finds_its_region(tiny_api: Any, scale: float) -> None:
    """Cosine is scale-free: float32 norms that overflow (or vanish) must not change it."""
    table = tiny_api.features("tiny")
    vec = table.drop(columns="region_id").to_numpy(dtype=np.float64)[2] * scale
    hits = tiny_api.similar("tiny", vector=vec, k=1)
    assert hits.region_id[0] == table.region_id[2] and hits.score[0] == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    "query", [{"vector": ["a"] * 8}, {"vector": [{}] * 8}, {"point": ("a", "b")}, {"point": (1,)}]
)
def test_store_similar_refuses_non_numeric_vectors_with_a_project_error(
    tiny_api: Any, query: dict[str, Any]
) -> None:
    with pytest.raises(MuseclError):
        tiny_api.similar("tiny", **query)
