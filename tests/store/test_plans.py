"""Query plans on PostGIS: the work on one model version of one city reads that version's rows
through an index, never a scan of the whole embeddings table (the largest one)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from musecl_store.search.index import _db_state
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import City, ModelVersion, Region
from musecl_store.store.vectors import put_embeddings

N_REGIONS, VERSIONS, DIM = 2_000, 20, 16


@pytest.fixture
def many_versions(backend, db_url: str):  # type: ignore[no-untyped-def]
    if backend.name != "postgis":
        pytest.skip("query plans are checked on PostGIS")
    engine = create_engine(db_url)
    with transaction(engine) as s:
        hashes = {f"hash_{m}": "-" for m in ("geometry", "poi", "remote", "street", "mobility")}
        mvs = []
        for c in range(2):
            city = City(name=f"c{c}", crs="EPSG:4326", source_path="-", revision=0)
            s.add(city)
            s.flush()
            s.execute(
                sa.insert(Region),
                [
                    {
                        "city_id": city.id,
                        "region_id": f"r{i}",
                        "geom": "SRID=4326;MULTIPOLYGON(((0 0,1 0,1 1,0 0)))",
                        "centroid": "SRID=4326;POINT(0.5 0.3)",
                        "area_km2": 1.0,
                        "revision": 1,
                        "hash_indicators": "-",
                        **hashes,
                    }
                    for i in range(N_REGIONS // 2)
                ],
            )
            pks = list(s.scalars(sa.select(Region.id).where(Region.city_id == city.id)))
            vec = np.random.default_rng(c).normal(size=(len(pks), DIM)).astype(np.float32)
            for _ in range(VERSIONS // 2):
                mv = ModelVersion(city_id=city.id, seed=0, data_revision=0, checkpoint_path="-")
                s.add(mv)
                s.flush()
                mvs.append(mv.id)
                for kind in ("fused", "poi"):
                    put_embeddings(s, mv.id, kind, pks, vec, 1)
    with engine.connect() as c:
        c.exec_driver_sql("ANALYZE")
    yield engine, mvs
    engine.dispose()


def plan(engine: sa.Engine, sql: str) -> str:
    with engine.connect() as c:
        return "\n".join(r[0] for r in c.exec_driver_sql(f"EXPLAIN {sql}"))


def test_one_model_version_is_read_through_its_index(many_versions) -> None:  # type: ignore[no-untyped-def]
    engine, mvs = many_versions
    mv = mvs[3]
    queries = {
        "staleness check": (
            "SELECT coalesce(max(revision), 0), count(*) FROM embeddings "
            f"WHERE model_version_id = {mv} AND kind = 'fused'"
        ),
        "load of one city": (
            "SELECT e.imputed, e.vector, r.region_id FROM embeddings e JOIN regions r "
            f"ON r.id = e.region_pk WHERE e.model_version_id = {mv} AND e.kind = 'fused' "
            "AND r.city_id = 1"
        ),
        "delete of a version": f"DELETE FROM embeddings WHERE model_version_id = {mv}",
    }
    for what, sql in queries.items():
        text = plan(engine, sql)
        assert "Seq Scan on embeddings" not in text, f"{what}:\n{text}"
        assert "ix_embeddings_model_version_id_kind_revision" in text, f"{what}:\n{text}"
    # the staleness check reads the index alone (no heap rows of 600+ bytes)
    assert "Index Only Scan" in plan(engine, queries["staleness check"])
    with transaction(engine) as s:
        assert _db_state(s, mv, "fused") == (1, N_REGIONS // 2)
