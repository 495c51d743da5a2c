"""Index and search on both backends, on trained embeddings: exact search equals brute force,
filters equal brute force over the filtered set, points find their region, a stale index is
caught up or rebuilt, and the CLI answers in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import h3
import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from pyproj import Geod
from sqlalchemy import delete, func, select, update

from musecl_store.cli import main
from musecl_store.nn.fusion import BRANCHES
from musecl_store.search.features import FeatureError, lookup
from musecl_store.search.filters import Filters, SearchError, parse_polygon
from musecl_store.search.index import RegionIndex
from musecl_store.search.query import Query, region_at, similar
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding, Region
from musecl_store.store.vectors import load_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture
def store(backend, trained: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(backend.clone(trained))
    yield engine, tmp_path / "index"
    engine.dispose()


def brute(session, region_ids, matrix, query_row, keep, k):  # type: ignore[no-untyped-def]
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = normed @ normed[query_row]
    cand = [i for i in range(len(region_ids)) if keep[i] and i != query_row]
    cand.sort(key=lambda i: (-scores[i], i))
    return [(region_ids[i], float(scores[i])) for i in cand[:k]]


def assert_same_ranking(hits, expected) -> None:  # type: ignore[no-untyped-def]
    assert len(hits) == len(expected)
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    for h, (rid, s) in zip(hits, expected, strict=True):  # same ids, up to exact ties
        if rid != h.region_id:
            assert abs(h.score - s) < 1e-6


def centroids(session, region_ids):  # type: ignore[no-untyped-def]
    rows = dict(session.execute(select(Region.region_id, func.ST_AsText(Region.centroid))).all())
    pts = [shapely.from_wkt(rows[r]) for r in region_ids]
    return np.array([p.x for p in pts]), np.array([p.y for p in pts])


def test_exact_search_equals_brute_force(store) -> None:  # type: ignore[no-untyped-def]
    engine, index_dir = store
    with transaction(engine) as s:
        idx = RegionIndex.open(s, index_dir, 1)
        assert idx.rebuilt and idx.stamp.index_type == "flat"
        ids, mat = load_embeddings(s, 1, "fused")
        keep = np.ones(len(ids), dtype=bool)
        for row in range(len(ids)):
            hits = similar(s, idx, Query(city="demo-3", region_id=ids[row]), k=10)
            assert_same_ranking(hits, brute(s, ids, mat, row, keep, 10))
            assert ids[row] not in [h.region_id for h in hits]


@pytest.mark.parametrize("kind", ["bbox", "polygon", "near"])
def test_filtered_search_equals_brute_force_over_the_filtered_set(store, kind: str) -> None:  # type: ignore[no-untyped-def]
    engine, index_dir = store
    with transaction(engine) as s:
        idx = RegionIndex.open(s, index_dir, 1)
        ids, mat = load_embeddings(s, 1, "fused")
        x, y = centroids(s, ids)
        cx, cy = float(np.median(x)), float(np.median(y))
        if kind == "bbox":
            f = Filters(bbox=(cx - 0.02, cy - 0.015, cx + 0.03, cy + 0.02))
            keep = (x >= cx - 0.02) & (x <= cx + 0.03) & (y >= cy - 0.015) & (y <= cy + 0.02)
        elif kind == "polygon":
            poly = shapely.Polygon(
                [(cx - 0.03, cy - 0.02), (cx + 0.03, cy - 0.01), (cx, cy + 0.03)]
            )
            f = Filters(polygon=parse_polygon(poly.wkt))
            keep = shapely.contains_xy(poly, x, y)
        else:
            f = Filters(near=(cx, cy, 2.5))
            _, _, d = Geod(ellps="WGS84").inv(np.full(len(x), cx), np.full(len(y), cy), x, y)
            keep = d <= 2500
        assert 3 < keep.sum() < len(ids)  # the filter matters
        for row in range(0, len(ids), 7):
            hits = similar(s, idx, Query(city="demo-3", region_id=ids[row]), k=5, filters=f)
            assert_same_ranking(hits, brute(s, ids, mat, row, keep, 5))
        # the over-fetch path gives the same answers as the brute-force path
        over = similar(
            s, idx, Query(city="demo-3", region_id=ids[0]), k=5, filters=f, brute_force_limit=0
        )
        assert_same_ranking(over, brute(s, ids, mat, 0, keep, 5))


def test_points_adjacency_and_bad_queries(store) -> None:  # type: ignore[no-untyped-def]
    engine, index_dir = store
    with transaction(engine) as s:
        idx = RegionIndex.open(s, index_dir, 1)
        ids, _ = load_embeddings(s, 1, "fused")
        for rid in ids[::9]:
            lat, lon = h3.cell_to_latlng(rid)
            assert region_at(s, lon, lat)[1] == rid
            via_point = similar(s, idx, Query(city="demo-3", point=(lon, lat)), k=3)
            via_id = similar(s, idx, Query(city="demo-3", region_id=rid), k=3)
            assert [h.region_id for h in via_point] == [h.region_id for h in via_id]
        rid = ids[len(ids) // 2]
        hits = similar(
            s,
            idx,
            Query(city="demo-3", region_id=rid),
            k=len(ids),
            filters=Filters(exclude_adjacent=True),
            with_attention=True,
            with_geometry=True,
        )
        neighbours = set(h3.grid_disk(rid, 1)) - {rid}
        assert neighbours & set(ids) and not neighbours & {h.region_id for h in hits}
        assert all(h.geometry and h.geometry["type"] == "MultiPolygon" for h in hits)
        assert all(h.attention and set(h.attention) == set(BRANCHES) for h in hits)
        with pytest.raises(SearchError, match="no region of city 'demo-3' contains the point"):
            similar(s, idx, Query(city="demo-3", point=(0.0, 0.0)), k=3)
        with pytest.raises(SearchError, match="has no region 'nope'"):
            similar(s, idx, Query(city="demo-3", region_id="nope"), k=3)
        with pytest.raises(SearchError, match="exactly one"):
            similar(s, idx, Query(city="demo-3"), k=3)


def test_a_stale_index_is_caught_up_or_rebuilt(store) -> None:  # type: ignore[no-untyped-def]
    engine, index_dir = store
    with transaction(engine) as s:
        RegionIndex.open(s, index_dir, 1)
        ids, mat = load_embeddings(s, 1, "fused")
    target = ids[3]
    new = -mat[3] + 0.5  # a region "re-embedded" far from where it was
    with transaction(engine) as s:
        pk = s.scalar(select(Region.id).where(Region.region_id == target))
        rev = s.scalar(select(func.max(Embedding.revision))) + 1
        s.execute(
            update(Embedding)
            .where(Embedding.region_pk == pk, Embedding.kind == "fused")
            .values(vector=new, revision=rev)
        )
    with transaction(engine) as s:
        idx = RegionIndex.open(s, index_dir, 1)
        assert idx.caught_up == 1 and not idx.rebuilt and idx.stamp.revision == rev
        hits = similar(s, idx, Query(vector=new), k=1)
        assert hits[0].region_id == target and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # a region deleted behind the index's back: the count no longer matches -> rebuilt on search
    with transaction(engine) as s:
        idx = RegionIndex.open(s, index_dir, 1)
        s.execute(delete(Region).where(Region.region_id == target))
        s.flush()
        assert not idx.is_current(s)
        hits = similar(s, idx, Query(vector=new), k=len(ids))
        assert idx.rebuilt and target not in {h.region_id for h in hits}
        s.rollback()


def test_feature_lookup(store) -> None:  # type: ignore[no-untyped-def]
    engine, _ = store
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, 1, "poi")
        table = lookup(s, "demo-3", kind="poi", region_ids=[ids[2], ids[0]])
        np.testing.assert_array_equal(table.matrix, mat[[2, 0]])
        frame = table.to_frame()
        assert list(frame.columns[:3]) == ["region_id", "e0", "e1"] and len(frame) == 2
        lat, lon = h3.cell_to_latlng(ids[5])
        pts = lookup(s, "demo-3", points=[(lon, lat), (0.0, 0.0)])
        assert pts.region_ids == [ids[5], None] and np.isnan(pts.matrix[1]).all()
        with pytest.raises(FeatureError, match="1 region id\\(s\\) have no fused embedding"):
            lookup(s, "demo-3", region_ids=["zzz"])


def test_cli_similar_features_and_index(backend, trained: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MUSECL_INDEX_DIR", str(tmp_path / "idx"))
    trained = backend.clone(trained)
    runner = CliRunner()
    engine = create_engine(trained)
    with transaction(engine) as s:
        ids, _ = load_embeddings(s, 1, "fused")
    engine.dispose()
    built = json.loads(
        runner.invoke(
            main, ["--db", trained, "index", "build", "--city", "demo-3", "--json"]
        ).stdout
    )
    assert built["ntotal"] == len(ids) and built["index_type"] == "flat"
    out = runner.invoke(
        main, ["--db", trained, "similar", "--city", "demo-3", ids[0], "-k", "4", "--json"]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"rank", "region_id", "city", "score", "percentile", "centroid"}
    assert rows[0]["score"] >= rows[-1]["score"]
    assert 100 >= rows[0]["percentile"] >= rows[-1]["percentile"] >= 0
    bad = runner.invoke(
        main, ["--db", trained, "similar", "--city", "demo-3", ids[0], "--bbox", "1,2,3"]
    )
    assert bad.exit_code == 2 and "MINLON,MINLAT,MAXLON,MAXLAT" in bad.output
    csv_out = runner.invoke(
        main, ["--db", trained, "features", "--city", "demo-3", "--regions", f"{ids[0]},{ids[1]}"]
    )
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("region_id,e0,e1") and len(lines) == 3
    assert lines[1].startswith(ids[0] + ",")
