"""``similar_many``, the batch ``similar``, on both backends: every answer is the one
``similar`` gives for that query alone (region ids, points, vectors; with and without
filters; both search branches; an HNSW index), a bad query is reported and the others are
answered, the batch checks the index once and searches once, and the CLI
(``musecl similar-many``) and the HTTP route (``POST /api/cities/{city}/similar/batch``)
give the same answers."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h3
import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from musecl_store.api import Store
from musecl_store.api import open as open_store
from musecl_store.cli import main
from musecl_store.errors import MuseclError
from musecl_store.search.filters import Filters, SearchError
from musecl_store.search.hits import Hit
from musecl_store.search.index import IndexOptions, RegionIndex
from musecl_store.search.many import Answer, Queries, similar_many
from musecl_store.search.query import Query, similar
from musecl_store.server.app import create_app
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding, Region

pytestmark = pytest.mark.slow

CITY = "demo-3"


@pytest.fixture
def store(backend: Any, trained: str, tmp_path: Path) -> Iterator[Store]:
    with open_store(backend.clone(trained), index_dir=tmp_path / "index") as s:
        yield s


def one_by_one(store: Store, kind: str, items: list[Any], **query: Any) -> list[list[Hit] | str]:
    """What ``Store.search`` answers for each query alone: its hits, or its error message."""
    out: list[list[Hit] | str] = []
    for item in items:
        try:
            if kind == "regions":
                out.append(store.search(CITY, item, **query))
            elif kind == "points":
                out.append(store.search(CITY, point=item, **query))
            else:
                out.append(store.search(CITY, vector=item, **query))
        except MuseclError as exc:
            out.append(str(exc))
    return out


def assert_same(answers: list[Answer], expected: Sequence[list[Hit] | str]) -> None:
    assert len(answers) == len(expected)
    for a, want in zip(answers, expected, strict=True):
        if isinstance(want, str):
            assert (a.error, a.hits) == (want, []), a.query
            continue
        assert a.error is None, (a.query, a.error)
        assert [h.region_id for h in a.hits] == [h.region_id for h in want], a.query
        assert [h.rank for h in a.hits] == [h.rank for h in want]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in want], atol=1e-5)
        assert [h.percentile for h in a.hits] == [h.percentile for h in want], a.query
        assert [(h.city, h.centroid) for h in a.hits] == [(h.city, h.centroid) for h in want]
        assert [h.attention for h in a.hits] == [h.attention for h in want]
        assert [h.geometry for h in a.hits] == [h.geometry for h in want]


def filter_cases(store: Store) -> dict[str, dict[str, Any]]:
    regions = store.regions(CITY)
    cx, cy = float(np.median(regions.lon)), float(np.median(regions.lat))
    box = (cx - 0.02, cy - 0.015, cx + 0.03, cy + 0.02)
    triangle = shapely.Polygon([(cx - 0.03, cy - 0.02), (cx + 0.03, cy - 0.01), (cx, cy + 0.03)])
    return {
        "none": {},
        "exclude_adjacent": {"exclude_adjacent": True},
        "bbox": {"bbox": box},
        "bbox+adjacent": {"bbox": box, "exclude_adjacent": True, "attention": True},
        "near": {"near": (cx, cy, 2.5), "geometry": True},
        "polygon": {"polygon": triangle.wkt},
        "same_city": {"same_city": True, "exclude_adjacent": True},
        "other_cities": {"other_cities": True},
    }


@pytest.mark.parametrize(
    "case",
    [
        "none",
        "exclude_adjacent",
        "bbox",
        "bbox+adjacent",
        "near",
        "polygon",
        "same_city",
        "other_cities",
    ],
)
def test_region_queries_equal_one_by_one(store: Store, case: str) -> None:
    query = filter_cases(store)[case]
    ids = list(store.regions(CITY).region_id)
    items = [*ids, "nope", ids[0]]  # an unknown region among them; a repeated one
    answers = store.search_many(CITY, items, k=7, **query)
    assert [a.query for a in answers] == items
    assert_same(answers, one_by_one(store, "regions", items, k=7, **query))
    assert answers[-2].error == f"city {CITY!r} has no region 'nope'"
    if case in ("bbox", "near", "polygon"):  # the filter matters
        assert 0 < len({h.region_id for a in answers for h in a.hits}) < len(ids)


def test_point_queries_equal_one_by_one(store: Store) -> None:
    ids = list(store.regions(CITY).region_id)
    points: list[Any] = []
    for rid in ids[::4]:
        lat, lon = h3.cell_to_latlng(rid)
        points.append((lon, lat))  # inside
        boundary = h3.cell_to_boundary(rid)
        points.append(boundary[0][::-1])  # a corner, shared by up to three regions
        (a_lat, a_lon), (b_lat, b_lon) = boundary[1], boundary[2]
        points.append(((a_lon + b_lon) / 2, (a_lat + b_lat) / 2))  # on (or near) an edge
    regions = store.regions(CITY)
    rng = np.random.default_rng(1)
    for _ in range(30):  # anywhere around the city: some in no region
        points.append(
            (
                float(rng.uniform(regions.lon.min() - 0.02, regions.lon.max() + 0.02)),
                float(rng.uniform(regions.lat.min() - 0.02, regions.lat.max() + 0.02)),
            )
        )
    points += [(0.0, 0.0), (200.0, 0.0), "abc"]
    for query in ({}, {"exclude_adjacent": True, "bbox": filter_cases(store)["bbox"]["bbox"]}):
        answers = store.search_many(CITY, points=points, k=5, **query)
        assert_same(answers, one_by_one(store, "points", points, k=5, **query))
    assert answers[0].query == f"{points[0][0]},{points[0][1]}"
    assert answers[-3].error == "no region of city 'demo-3' contains the point (0.0, 0.0)"
    assert "longitude 200.0 is outside" in str(answers[-2].error)
    assert "expected LON,LAT" in str(answers[-1].error) and answers[-1].query == "'abc'"
    assert sum(a.error is None for a in answers) > len(ids[::4]) * 3  # most are answered


def test_vector_queries_equal_one_by_one(store: Store) -> None:
    feats = store.features(CITY)
    mat = feats.drop(columns="region_id").to_numpy()
    rng = np.random.default_rng(2)
    vectors: list[Any] = list(mat[::3] + 0.1 * rng.normal(size=mat[::3].shape))
    vectors += [np.zeros(mat.shape[1]), [1.0, 2.0], [float("nan")] * mat.shape[1]]
    box = filter_cases(store)["bbox"]["bbox"]
    for query in ({}, {"bbox": box}, {"same_city": True}):
        answers = store.search_many(CITY, vectors=vectors, k=6, **query)
        assert [a.query for a in answers] == list(range(len(vectors)))
        assert_same(answers, one_by_one(store, "vectors", vectors, k=6, **query))
    assert "all zeros" in str(answers[-3].error)
    assert "has 2 values" in str(answers[-2].error) and "NaN" in str(answers[-1].error)
    with pytest.raises(SearchError, match="adjacent regions needs a query region"):
        store.search_many(CITY, vectors=vectors, exclude_adjacent=True)


def test_the_frame(store: Store) -> None:
    ids = list(store.regions(CITY).region_id)
    frame = store.similar_many(CITY, [ids[0], "nope", ids[1]], k=3, attention=True)
    assert list(frame.columns[:8]) == [
        "query",
        "rank",
        "region_id",
        "city",
        "score",
        "percentile",
        "lon",
        "lat",
    ]
    assert frame.columns[-1] == "error" and frame.columns[8].startswith("attention:")
    assert list(frame["query"]) == [ids[0]] * 3 + ["nope"] + [ids[1]] * 3
    assert list(frame["rank"].astype(object).fillna(0)) == [1, 2, 3, 0, 1, 2, 3]
    assert frame["error"].notna().tolist() == [False] * 3 + [True] + [False] * 3
    alone = store.similar(CITY, ids[1], k=3, attention=True)
    got = frame[frame["query"] == ids[1]].drop(columns=["query", "error"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got.astype({"rank": "int64"}), alone[got.columns], check_exact=False, atol=1e-5
    )
    with_shapes = store.similar_many(CITY, [ids[2], "nope"], k=2, geometry=True)
    assert with_shapes.crs == "EPSG:4326" and with_shapes.geometry.iloc[-1] is None
    assert with_shapes.geometry.iloc[0].geom_type == "MultiPolygon"
    empty = store.similar_many(CITY, [])
    assert len(empty) == 0 and "error" in empty.columns


def test_arguments_are_checked_like_similar(store: Store) -> None:
    ids = list(store.regions(CITY).region_id)
    with pytest.raises(SearchError, match="exactly one of region ids, points or vectors"):
        store.similar_many(CITY, ids, points=[(0.0, 0.0)])
    with pytest.raises(SearchError, match="exactly one"):
        store.similar_many(CITY)
    with pytest.raises(SearchError, match="must be a list"):
        store.similar_many(CITY, ids[0])
    with pytest.raises(SearchError, match="k must be an integer"):
        store.similar_many(CITY, ids, k=0)
    with pytest.raises(SearchError, match="bbox"):
        store.similar_many(CITY, ids, bbox=(1, 2, 3))
    with pytest.raises(SearchError, match="exclude each other"):
        store.similar_many(CITY, ids, same_city=True, other_cities=True)
    with pytest.raises(MuseclError, match="no city named 'nowhere'"):
        store.similar_many("nowhere", ids)


def test_both_branches_include_self_and_an_hnsw_index(
    backend: Any, trained: str, tmp_path: Path
) -> None:
    engine = create_engine(backend.clone(trained))
    try:
        with transaction(engine) as s:
            flat = RegionIndex.open(s, tmp_path / "flat", 1)
            hnsw = RegionIndex.build(s, tmp_path / "hnsw", 1, options=IndexOptions("hnsw"))
            ids = list(s.scalars(select(Region.region_id).order_by(Region.region_id)))
            lat, lon = h3.cell_to_latlng(ids[len(ids) // 2])
            cases = [
                (flat, Filters(), 200_000),
                (flat, Filters(include_self=True), 200_000),
                (flat, Filters(include_self=True, exclude_adjacent=True), 200_000),
                (flat, Filters(near=(lon, lat, 3.0), exclude_adjacent=True), 0),  # over-fetch
                (flat, Filters(near=(lon, lat, 3.0), include_self=True), 200_000),
                (hnsw, Filters(exclude_adjacent=True), 200_000),
            ]
            for idx, filters, limit in cases:
                answers = similar_many(
                    s,
                    idx,
                    Queries(city=CITY, region_ids=ids),
                    k=9,
                    filters=filters,
                    brute_force_limit=limit,
                )
                want = [
                    similar(
                        s,
                        idx,
                        Query(city=CITY, region_id=r),
                        k=9,
                        filters=filters,
                        brute_force_limit=limit,
                    )
                    for r in ids
                ]
                assert_same(answers, want)
                if filters == Filters(include_self=True):  # each region is its own best
                    assert all(a.hits[0].region_id == a.query for a in answers)
    finally:
        engine.dispose()


def test_a_batch_checks_the_index_once_and_searches_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(store.regions(CITY).region_id)
    store.similar_many(CITY, ids[:1])  # opens (builds) the index
    calls = {"refresh": 0, "search_snapshot": 0}
    for name in calls:
        real = getattr(RegionIndex, name)

        def counted(self: RegionIndex, *args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(RegionIndex, name, counted)
    answers = store.search_many(CITY, ids, k=5)
    assert calls == {"refresh": 1, "search_snapshot": 1}
    assert all(len(a.hits) == 5 for a in answers)
    for r in ids[:5]:  # one by one: a check and a search each
        store.search(CITY, r, k=5)
    assert calls == {"refresh": 6, "search_snapshot": 6}


def test_a_batch_sees_a_changed_embedding(store: Store) -> None:
    """The one refresh of a batch catches the index up with the database."""
    ids = list(store.regions(CITY).region_id)
    store.similar_many(CITY, ids[:2])  # the index is built and cached
    feats = store.features(CITY).set_index("region_id")
    new = -feats.loc[ids[1]].to_numpy() + 0.5
    with store.session(write=True) as s:
        pk = s.scalar(select(Region.id).where(Region.region_id == ids[1]))
        rev = int(s.scalar(select(func.max(Embedding.revision))) or 0) + 1
        s.execute(
            update(Embedding)
            .where(Embedding.region_pk == pk, Embedding.kind == "fused")
            .values(vector=new.astype(np.float32), revision=rev)
        )
    got = store.search_many(CITY, vectors=[new, feats.loc[ids[2]].to_numpy()], k=1)
    assert got[0].hits[0].region_id == ids[1] and got[0].hits[0].score == pytest.approx(1, abs=1e-5)
    assert got[1].hits[0].region_id == ids[2]


# ---------------------------------------------------------------------------- CLI


def cli(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_cli_csv_in_and_out(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECL_INDEX_DIR", str(tmp_path / "index"))
    ids = list(store.regions(CITY).region_id)
    queries = tmp_path / "queries.csv"
    queries.write_text("name,region_id\n" + "".join(f"x,{r}\n" for r in [*ids[:8], "nope"]))
    result = cli("--db", store.url, "similar-many", "--city", CITY, str(queries), "-k", "3")
    assert result.exit_code == 0, result.output
    got = pd.read_csv(io.StringIO(result.stdout), dtype={"query": str})
    want = store.similar_many(CITY, [*ids[:8], "nope"], k=3)
    assert list(got.columns) == list(want.columns)
    assert list(got["query"]) == list(want["query"])
    assert got["region_id"].fillna("").tolist() == want["region_id"].fillna("").tolist()
    np.testing.assert_allclose(got["score"], want["score"].astype(float), atol=1e-6)
    assert got["error"].iloc[-1] == f"city {CITY!r} has no region 'nope'"
    assert "1 of the queries could not be answered" in result.stderr

    out = tmp_path / "similar.csv"
    points = [(float(lon), float(lat)) for lon, lat in want[["lon", "lat"]].to_numpy()[:4]]
    text = "lon,lat\n" + "".join(f"{x},{y}\n" for x, y in points)
    result = cli(
        "--db", store.url, "similar-many", "--city", CITY, "-", "--exclude-adjacent",
        "--out", str(out), input=text,
    )  # fmt: skip
    assert result.exit_code == 0 and result.stdout == "", result.output
    frame = pd.read_csv(out, dtype={"query": str})
    assert list(frame["query"].unique()) == [f"{x},{y}" for x, y in points]
    want = store.similar_many(CITY, points=points, exclude_adjacent=True)
    assert frame["region_id"].tolist() == want["region_id"].tolist()


def test_cli_json(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECL_INDEX_DIR", str(tmp_path / "index"))
    ids = list(store.regions(CITY).region_id)
    text = "region_id\n" + "\n".join(ids[:3]) + "\n"
    result = cli(
        "--db", store.url, "similar-many", "--city", CITY, "-", "--json", "-k", "2",
        "--near", "0,0,5", input=text,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"query": r, "hits": [], "error": None} for r in ids[:3]]
    result = cli("--db", store.url, "similar-many", "--city", CITY, "-", "--json", input=text)
    rows = json.loads(result.stdout)
    want = store.search_many(CITY, ids[:3])
    assert [r["query"] for r in rows] == ids[:3]
    assert [[h["region_id"] for h in r["hits"]] for r in rows] == [
        [h.region_id for h in a.hits] for a in want
    ]
    assert set(rows[0]["hits"][0]) == {
        "rank",
        "region_id",
        "city",
        "score",
        "percentile",
        "centroid",
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lon,lat\n8.5,47.3\nabc,47.3\n", ":3: lon/lat must be numbers"),
        ("lon,lat\n8.5,47.3\n\n8.5,147.3\n", ":4: (8.5, 147.3) is not a lon/lat point"),
        ("region_id,other\nabc,1\n,2\n", ":3: the row has no region_id"),
        ("region_id,lon,lat\nabc,1,2\n", ":1: has a region_id column and lon/lat columns"),
        ("x,y\n1,2\n", ":1: needs a region_id column, or lon and lat columns"),
    ],
)
def test_cli_bad_rows_name_the_file_and_line(
    store: Store, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "queries.csv"
    path.write_text(content)
    result = cli("--db", store.url, "similar-many", "--city", CITY, str(path))
    assert result.exit_code == 1 and f"{path}{message}" in result.output, result.output
    piped = cli("--db", store.url, "similar-many", "--city", CITY, "-", input=content)
    assert piped.exit_code == 1 and f"stdin{message}" in piped.output, piped.output


def test_cli_usage_errors(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("region_id\nx\n")
    bad = cli("--db", store.url, "similar-many", "--city", CITY, str(path), "--bbox", "1,2")
    assert bad.exit_code == 2 and "--bbox" in bad.output
    missing = cli("--db", store.url, "similar-many", "--city", CITY, str(tmp_path / "no.csv"))
    assert missing.exit_code == 1 and "no.csv: cannot read" in missing.output
    help_text = cli("similar-many", "--help").output
    assert (
        "Example:" in help_text and "region_id" in help_text and "--exclude-adjacent" in help_text
    )


# ---------------------------------------------------------------------------- HTTP


def test_http_batch_route(store: Store) -> None:
    client = TestClient(create_app(store))
    url = f"/api/cities/{CITY}/similar/batch"
    ids = list(store.regions(CITY).region_id)
    body = client.post(url, json={"regions": [*ids[:5], "nope"], "k": 4, "exclude_adjacent": True})
    assert body.status_code == 200, body.text
    got = body.json()
    want = store.search_many(CITY, [*ids[:5], "nope"], k=4, exclude_adjacent=True)
    assert got["city"] == CITY and got["kind"] == "fused"
    shown = [  # the response model shows absent geometry and attention as null
        {**a, "hits": [{k: v for k, v in h.items() if v is not None} for h in a["hits"]]}
        for a in got["answers"]
    ]
    assert shown == json.loads(json.dumps([a.to_dict() for a in want]))
    assert got["answers"][-1]["error"] and got["answers"][-1]["hits"] == []

    regions = store.regions(CITY)
    pts = [(float(regions.lon[i]), float(regions.lat[i])) for i in range(3)] + [(0.0, 0.0)]
    by_point = client.post(url, json={"points": pts, "k": 2, "attention": True}).json()
    assert [a["hits"][0]["region_id"] for a in by_point["answers"][:3]] == [
        a.hits[0].region_id for a in store.search_many(CITY, points=pts[:3], k=2)
    ]
    assert by_point["answers"][0]["hits"][0]["attention"]
    assert "contains the point" in by_point["answers"][-1]["error"]

    feats = store.features(CITY)
    vecs = feats.drop(columns="region_id").to_numpy()[:3].tolist()
    by_vector = client.post(url, json={"vectors": [*vecs, [1.0, 2.0]], "k": 1}).json()
    assert [a["hits"][0]["region_id"] for a in by_vector["answers"][:3]] == list(
        feats.region_id[:3]
    )
    assert [a["query"] for a in by_vector["answers"]] == [0, 1, 2, 3]
    assert "has 2 values" in by_vector["answers"][-1]["error"]

    for request, parameter in (
        ({"k": 3}, "regions"),
        ({"regions": ids[:1], "points": pts}, "points"),
        ({"regions": ids[:1], "bbox": [1, 2, 3, 4, 5]}, "bbox"),
        ({"regions": ids[:1], "k": 0}, "k"),
    ):
        bad = client.post(url, json=request)
        assert bad.status_code == 422 and bad.json()["parameter"] == parameter, bad.text
    assert (
        client.post("/api/cities/nowhere/similar/batch", json={"regions": ids}).status_code == 404
    )
    assert "/api/cities/{city}/similar/batch" in client.get("/openapi.json").json()["paths"]
