"""Hostile search arguments, generated: property-based fuzzing (hypothesis) of what a query is
made of. ``search.parse_polygon``, ``geo.coordinates`` (the bbox, near and point arguments) and
``search.Query`` vectors give a valid result or raise a ``MuseclError`` that is a
``ValueError``, with a one-line message naming the argument.

Settings, shared strategies and fixtures: tests/fuzzing.py. Cases per test:

    test_parse_polygon_fuzz ........................ 1000
    test_coordinates_fuzz .......................... 1000
    test_query_vector_fuzz ......................... 1000
    total .......................................... 3000
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from musecl_store import geo
from musecl_store.search.filters import SearchError, parse_polygon
from musecl_store.search.query import Query, query_vector
from tests.fuzzing import COORD_TOKEN, JSON, POLYGON_TEXT, TEXT, assert_project_error, cases


@cases(1000)
@given(text=POLYGON_TEXT)
def test_parse_polygon_fuzz(text: str) -> None:
    try:
        geom = parse_polygon(text)
    except SearchError as exc:
        assert_project_error(exc, "polygon")
        return
    assert geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_empty
    assert geom.is_valid and geom.area > 0
    x, y = geom.exterior.xy if geom.geom_type == "Polygon" else geom.geoms[0].exterior.xy
    assert geo.lonlat_ok(np.asarray(x), np.asarray(y)).all()


NAMES = st.sampled_from(["LON,LAT", "LON,LAT,KM", "MINLON,MINLAT,MAXLON,MAXLAT"])


@cases(1000)
@given(
    names=NAMES,
    value=st.one_of(
        st.lists(COORD_TOKEN, max_size=5).map(",".join),
        st.text(max_size=20),
        st.lists(st.floats() | st.integers() | st.booleans() | TEXT | st.none(), max_size=5),
        st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(-10, 10)),
        hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=4)),
        st.none(),
        st.integers(),
        st.dictionaries(TEXT, st.integers(), max_size=2),
        st.binary(max_size=8),
    ),
)
def test_coordinates_fuzz(names: str, value: Any) -> None:
    try:
        got = geo.coordinates(value, names)
    except ValueError as exc:
        assert_project_error(exc, "expected", "longitude", "latitude", "distance")
        return
    wanted = names.split(",")
    assert len(got) == len(wanted) and all(isinstance(v, float) for v in got)
    for name, v in zip(wanted, got, strict=True):
        assert math.isfinite(v)
        if name.endswith("LON"):
            assert -180 <= v <= 180
        if name.endswith("LAT"):
            assert -90 <= v <= 90
        if name == "KM":
            assert v > 0


VECTORS = st.one_of(
    st.lists(st.floats(), max_size=10),
    st.lists(st.floats(-1e3, 1e3), min_size=8, max_size=8),
    st.lists(st.floats(-1e3, 1e3) | st.integers(-(2**70), 2**70), min_size=8, max_size=8),
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8),
    ),
    st.lists(JSON, max_size=4),
    st.lists(st.lists(st.floats(-1, 1), max_size=8), max_size=3),
    st.sampled_from([[0.0] * 8, [1e39] * 8, "abc", b"xyz", 5, 3.5, {"a": 1}, [], [[]]]),
)


@cases(1000)
@given(vector=VECTORS)
def test_query_vector_fuzz(vector: Any) -> None:
    try:
        q = Query(city="tiny", vector=vector)
    except SearchError as exc:
        assert_project_error(exc, "vector")
        return
    v = q.vector
    assert v is not None and v.ndim == 1 and v.size and np.isfinite(v).all() and np.any(v)
    np.testing.assert_array_equal(v, query_vector(vector))
