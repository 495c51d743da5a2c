"""Bounded memory: exports, the index build and its catch-up read the vectors in batches of
``embeddings.CHUNK_ROWS`` rows. Split into many small batches, they give the same files,
the same vectors and the same index as in one batch, on both backends."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import shapely
from geoalchemy2.shape import to_shape
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from musecl_store.exports.files import export_city
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.search.index import IndexOptions, RegionIndex
from musecl_store.store import vectors as embeddings
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding, ModelVersion, Region, Revision
from musecl_store.store.vectors import iter_embeddings, load_embeddings, put_embeddings

CITY = "stream"
SIDE = 16  # SIDE**2 regions
DIM = 12
SMALL = 7  # rows per batch: many batches, the last one short


def _region_ids() -> list[str]:
    """Ids whose code point order differs from a case-insensitive or accent-aware one."""
    prefixes = ["r", "R", "a-", "Z_", "é", "b"]
    return [f"{prefixes[i % len(prefixes)]}{i:03d}" for i in range(SIDE * SIDE)]


def _write_bundle(out: Path) -> None:
    out.mkdir()
    (out / "city.json").write_text(json.dumps({"name": CITY, "crs": "EPSG:4326"}))
    feats = []
    for i, rid in enumerate(_region_ids()):
        x, y = 10 + 0.001 * (i % SIDE), 50 + 0.001 * (i // SIDE)
        ring = [[x, y], [x + 0.001, y], [x + 0.001, y + 0.001], [x, y + 0.001], [x, y]]
        feats.append(
            {
                "type": "Feature",
                "properties": {"region_id": rid},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    (out / "regions.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": feats})
    )
    with (out / "pois.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["poi_id", "lon", "lat", "name", "category", "text"])
        for i in range(0, SIDE * SIDE, 5):
            x, y = 10.0005 + 0.001 * (i % SIDE), 50.0005 + 0.001 * (i // SIDE)
            w.writerow([f"p{i}", f"{x:.6f}", f"{y:.6f}", "", "shop", ""])


@pytest.fixture(scope="module")
def store_url(backend: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A city of 256 regions with fused vectors (attention on most, imputed on some) and poi
    vectors of model version 1, written directly (no training)."""
    bundle = tmp_path_factory.mktemp("stream") / "bundle"
    _write_bundle(bundle)
    url = backend.new_url()
    engine = create_engine(url)
    rng = np.random.default_rng(7)
    with transaction(engine, write=True) as s:
        ingest_bundle(s, bundle, show_progress=False)
        pks = [pk for (pk,) in s.execute(select(Region.id).order_by(Region.id))]
        city = s.execute(select(Region.city_id)).scalars().first()
        mv = ModelVersion(city_id=city, seed=0, data_revision=0, checkpoint_path="-", active=True)
        rev = Revision(operation="train", city_id=city)
        s.add_all([mv, rev])
        s.flush()
        attention = [
            None if i % 9 == 0 else {"poi": round(float(a), 6), "mobility": 0.25}
            for i, a in enumerate(rng.random(len(pks)))
        ]
        put_embeddings(
            s,
            mv.id,
            "fused",
            pks,
            rng.standard_normal((len(pks), DIM)),
            rev.id,
            attention=attention,
            imputed=[i % 4 == 0 for i in range(len(pks))],
        )
        put_embeddings(s, mv.id, "poi", pks, rng.standard_normal((len(pks), DIM)), rev.id)
    engine.dispose()
    return url


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    e = create_engine(store_url)
    yield e
    e.dispose()


def _chunks(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", rows)


def test_iter_embeddings_yields_bounded_batches_in_region_id_order(engine: Engine) -> None:
    n = SIDE * SIDE
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, 1, "fused")
        chunks = list(
            iter_embeddings(s, 1, "fused", geometry=True, attention=True, chunk_rows=SMALL)
        )
        truth = {
            rid: (np.frombuffer(bytes(v), "<f4") if isinstance(v, bytes) else v, att, imp, g)
            for rid, v, att, imp, g in s.execute(
                select(
                    Region.region_id,
                    Embedding.vector,
                    Embedding.attention,
                    Embedding.imputed,
                    Region.geom,
                )
                .join(Embedding, Embedding.region_pk == Region.id)
                .where(Embedding.kind == "fused")
            )
        }
    assert ids == sorted(_region_ids()) and mat.shape == (n, DIM)  # code point order
    assert [len(c.ids) for c in chunks] == [SMALL] * (n // SMALL) + [n % SMALL]
    assert [r for c in chunks for r in c.ids] == ids
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]), mat)
    for c in chunks:
        assert c.geometries is not None and c.attention is not None
        for rid, vec, imp, geom, att in zip(
            c.ids, c.vectors, c.imputed, c.geometries, c.attention, strict=True
        ):
            want_vec, want_att, want_imp, want_geom = truth[rid]
            np.testing.assert_array_equal(vec, np.asarray(want_vec, np.float32))
            assert bool(imp) == want_imp and att == want_att
            assert shapely.equals_exact(geom, to_shape(want_geom), tolerance=0)
    assert sum(a is None for c in chunks for a in c.attention or []) == math.ceil(n / 9)


@pytest.mark.parametrize("fmt", ["csv", "geojson", "parquet"])
def test_an_export_in_many_batches_equals_one_in_one_batch(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    outs = {}
    for rows in (10**6, SMALL):
        _chunks(monkeypatch, rows)
        with transaction(engine) as s:
            out = export_city(s, CITY, tmp_path / f"{rows}.{fmt}", fmt=fmt)
            assert out.rows == SIDE * SIDE and out.dim == DIM
        outs[rows] = tmp_path / f"{rows}.{fmt}"
    one, many = outs[10**6], outs[SMALL]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.part"))
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, 1, "fused")
    if fmt != "parquet":
        assert one.read_bytes() == many.read_bytes()
    if fmt == "csv":
        want = [["region_id", *(f"e{i}" for i in range(DIM))]]
        want += [[rid, *(f"{v:.7g}" for v in vec)] for rid, vec in zip(ids, mat, strict=True)]
        with many.open(newline="") as f:
            assert list(csv.reader(f)) == want
    elif fmt == "geojson":
        doc = json.loads(many.read_text())
        assert [f["properties"]["region_id"] for f in doc["features"]] == ids
        atts = [f["properties"]["attention"] for f in doc["features"]]
        assert sum(a is None for a in atts) == math.ceil(SIDE * SIDE / 9)
        got = np.array([f["properties"]["embedding"] for f in doc["features"]])
        np.testing.assert_allclose(got, mat, rtol=0, atol=1e-7)  # rounded to 7 places
        assert all(f["geometry"]["type"] == "MultiPolygon" for f in doc["features"])
    else:
        import geopandas
        import pyarrow.parquet as pq

        a, b = pq.read_table(one), pq.read_table(many)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata
        assert pq.ParquetFile(many).metadata.num_row_groups == math.ceil(SIDE * SIDE / SMALL)
        assert b.column("region_id").to_pylist() == ids
        np.testing.assert_array_equal(np.array(b.column("embedding").to_pylist(), np.float32), mat)
        geo = json.loads(b.schema.metadata[b"geo"])["columns"]["geometry"]
        frame = geopandas.read_parquet(many)
        assert geo["geometry_types"] == ["MultiPolygon"] and frame.crs.to_epsg() == 4326
        assert geo["bbox"] == pytest.approx([10.0, 50.0, 10.0 + SIDE * 0.001, 50.0 + SIDE * 0.001])
        assert geo["bbox"] == list(frame.total_bounds)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_an_index_built_in_many_batches_answers_like_one_built_in_one(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_type: str
) -> None:
    built = {}
    for rows in (10**6, SMALL):
        _chunks(monkeypatch, rows)
        with transaction(engine) as s:
            built[rows] = RegionIndex.build(
                s, tmp_path / str(rows), 1, "fused", IndexOptions(index_type)
            )
    one, many = built[10**6], built[SMALL]
    assert one.stamp == many.stamp and many.stamp.count == SIDE * SIDE
    ids = faiss.vector_to_array(many.cpu_index.id_map)
    assert np.array_equal(ids, faiss.vector_to_array(one.cpu_index.id_map))
    assert np.array_equal(ids, np.sort(ids))  # added in region pk order
    with transaction(engine) as s:
        _, mat = load_embeddings(s, 1, "fused")
    scores_1, found_1 = one.search_snapshot(mat, 10)
    scores_n, found_n = many.search_snapshot(mat, 10)
    assert np.array_equal(found_1, found_n) and np.array_equal(scores_1, scores_n)
    if index_type == "flat":
        assert np.array_equal(many.vectors(ids), one.vectors(ids))
        reopened = faiss.read_index(
            str(many.folder / json.loads((many.folder / "current.json").read_text())["file"])
        )
        assert np.array_equal(
            reopened.search(mat[:5] / np.linalg.norm(mat[:5], axis=1, keepdims=True), 10)[1],
            found_1[:5],
        )


def test_an_hnsw_index_built_in_many_batches_finds_the_exact_neighbours(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chunks(monkeypatch, SMALL)
    with transaction(engine) as s:
        hnsw = RegionIndex.build(s, tmp_path / "h", 1, "fused", IndexOptions("hnsw"))
        exact = RegionIndex.build(s, tmp_path / "f", 1, "fused", IndexOptions("flat"))
        _, mat = load_embeddings(s, 1, "fused")
    assert hnsw.stamp.index_type == "hnsw" and int(hnsw.cpu_index.ntotal) == SIDE * SIDE
    _, truth = exact.search_snapshot(mat, 10)
    _, found = hnsw.search_snapshot(mat, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.99, recall


def test_catching_up_in_batches_equals_catching_up_at_once(
    backend: Any, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(backend.clone(store_url))
    try:
        with transaction(engine) as s:
            for name in ("one", "many"):
                RegionIndex.build(s, tmp_path / name, 1, "fused", IndexOptions("flat"))
        rng = np.random.default_rng(3)
        with transaction(engine, write=True) as s:  # 20 regions get new vectors
            pks = sorted(
                s.execute(select(Embedding.region_pk).where(Embedding.kind == "fused"))
                .scalars()
                .all()
            )[3:60:3]
            s.execute(
                delete(Embedding).where(Embedding.kind == "fused", Embedding.region_pk.in_(pks))
            )
            rev = Revision(operation="reembed", city_id=None)
            s.add(rev)
            s.flush()
            put_embeddings(s, 1, "fused", pks, rng.standard_normal((len(pks), DIM)), rev.id)
        opened = {}
        for name, rows in (("one", 10**6), ("many", SMALL)):
            _chunks(monkeypatch, rows)
            with transaction(engine) as s:
                opened[name] = RegionIndex.open(s, tmp_path / name, 1, "fused")
                assert not opened[name].rebuilt and opened[name].caught_up == len(pks)
            _chunks(monkeypatch, 10**6)
        with transaction(engine) as s:
            fresh = RegionIndex.build(s, tmp_path / "fresh", 1, "fused", IndexOptions("flat"))
            _, mat = load_embeddings(s, 1, "fused")
        one, many = opened["one"].cpu_index, opened["many"].cpu_index
        assert np.array_equal(faiss.vector_to_array(one.id_map), faiss.vector_to_array(many.id_map))
        ids = np.sort(faiss.vector_to_array(one.id_map))
        assert np.array_equal(opened["many"].vectors(ids), fresh.vectors(ids))
        for idx in (opened["one"], opened["many"]):
            assert np.array_equal(idx.search_snapshot(mat, 5)[1], fresh.search_snapshot(mat, 5)[1])
    finally:
        engine.dispose()


def test_points_are_located_batch_by_batch_as_in_the_whole_city(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A city of polygons (no H3 cells): regions stream in batches; a point on a shared border
    or corner still goes to the region with the smallest id, one outside to none."""
    from musecl_store import geo
    from musecl_store.search.features import locate, lookup

    rng = np.random.default_rng(5)
    lon = np.concatenate(
        [
            10 + rng.random(40) * SIDE * 0.001,
            10 + 0.001 * rng.integers(1, SIDE, 20),  # on vertical borders
            [10.003, 10.0, 9.5, np.nan, 10.0005],  # a corner, the city's edge, outside
        ]
    )
    lat = np.concatenate(
        [
            50 + rng.random(40) * SIDE * 0.001,
            50 + rng.random(20) * SIDE * 0.001,
            [50.004, 50.0005, 50.0, 50.0, 51.0],
        ]
    )
    with transaction(engine) as s:
        city = int(s.scalar(select(Region.city_id).limit(1)) or 0)
        regions = s.execute(
            select(Region.region_id, Region.geom)
            .where(Region.city_id == city)
            .order_by(Region.region_id)
        ).all()
        found = geo.RegionLocator([to_shape(r.geom) for r in regions]).locate(lon, lat)
        want = [regions[i].region_id if i >= 0 else None for i in found]
        _chunks(monkeypatch, SMALL)
        got = locate(s, city, lon, lat)
        table = lookup(s, CITY, points=list(zip(lon.tolist(), lat.tolist(), strict=True)))
    assert got == want and table.region_ids == want
    assert want[-3:] == [None, None, None] and None not in want[:-3]
    assert sum(r != sorted(_region_ids())[0] for r in want[:-3]) > 50  # many batches reached
