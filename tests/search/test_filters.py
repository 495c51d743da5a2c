"""The search filters are described once (search.filters.FILTER_FIELDS): the facade's
keywords, the CLI's options and the HTTP parameters all carry exactly those filters, and a
bad value is reported by the search under its own name."""

from __future__ import annotations

import pytest

from musecl_store.cli import main
from musecl_store.search.filters import (
    FILTER_FIELDS,
    FILTER_NAMES,
    Search,
    SearchError,
    SearchOptions,
    filters_from,
)
from tests.surface.dump import openapi


def test_every_front_end_carries_the_described_filters() -> None:
    assert set(FILTER_NAMES) <= SearchOptions.__optional_keys__
    assert SearchOptions.__optional_keys__ <= Search.__optional_keys__
    for command in ("similar", "similar-many"):
        options = {o for p in main.commands[command].params for o in p.opts}
        assert {f.option for f in FILTER_FIELDS} <= options, command
    doc = openapi()
    get = {p["name"] for p in doc["paths"]["/api/cities/{city}/similar"]["get"]["parameters"]}
    assert set(FILTER_NAMES) <= get
    for body in ("VectorQuery", "BatchQuery"):
        assert set(FILTER_NAMES) <= set(doc["components"]["schemas"][body]["properties"])


@pytest.mark.parametrize(
    ("keywords", "parameter"),
    [
        ({"bbox": "1,2,3"}, "bbox"),
        ({"bbox": [5, 5, 1, 1]}, "bbox"),
        ({"near": "8.5,47.3,-1"}, "near"),
        ({"near": [200, 0, 1]}, "near"),
        ({"polygon": "POINT (1 2)"}, "polygon"),
        ({"polygon": "not wkt"}, "polygon"),
        ({"same_city": True, "other_cities": True}, "other_cities"),
    ],
)
def test_a_bad_filter_is_named(keywords: dict[str, object], parameter: str) -> None:
    with pytest.raises(SearchError) as err:
        filters_from(keywords)
    assert err.value.parameter == parameter


def test_text_and_numbers_are_the_same_filter() -> None:
    a = filters_from({"bbox": "8.5,47.3,8.6,47.4", "near": "8.5,47.3,2"})
    b = filters_from({"bbox": [8.5, 47.3, 8.6, 47.4], "near": (8.5, 47.3, 2.0)})
    assert a == b and a.spatial
