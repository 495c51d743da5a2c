"""Bulk embedding I/O on both backends, in one run (prints JSON; the README quotes it).

Per backend, ``--rows`` 128-d vectors (default 1M: 100 model versions x 10k regions):

- write: ``put_embeddings`` (PostgreSQL: one binary COPY stream built with numpy; SpatiaLite:
  batched multi-row INSERTs), as rows/s;
- baselines on a sample (``--sample`` rows): row-by-row ORM inserts (one INSERT per row, as a
  naive loop does) and, on PostgreSQL, the COPY that adapts every row in Python
  (``copy.write_row``, what ``put_embeddings`` did before);
- read: ``load_embeddings`` of one model version back into one numpy matrix, as rows/s
  (PostgreSQL: binary COPY out, decoded in 8 MB chunks; SpatiaLite: one query + frombuffer),
  over all versions, and the old PostgreSQL path (``array_send`` in a SELECT) beside it.

Usage: .venv/bin/python bench/bulk_io.py [--rows 1000000] [--pg-admin URL] [--backends ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from musecl_store.store import dialect
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.schema import upgrade
from musecl_store.store.tables import City, Embedding, ModelVersion, Region
from musecl_store.store.vectors import load_embeddings, put_embeddings

N_REGIONS, DIM = 10_000, 128


def _setup(engine: sa.Engine, versions: int) -> tuple[list[int], list[int]]:
    """A city of N_REGIONS regions and ``versions`` (+1 spare) empty model versions."""
    with transaction(engine) as s:
        city = City(name="bulk", crs="EPSG:4326", source_path="-", revision=0)
        s.add(city)
        s.flush()
        hashes = {f"hash_{m}": "-" for m in ("geometry", "poi", "remote", "street", "mobility")}
        s.execute(
            sa.insert(Region),
            [
                {
                    "city_id": city.id,
                    "region_id": f"r{i:06d}",
                    "geom": "SRID=4326;MULTIPOLYGON(((0 0,1 0,1 1,0 0)))",
                    "centroid": "SRID=4326;POINT(0.5 0.3)",
                    "area_km2": 1.0,
                    "revision": 1,
                    "hash_indicators": "-",
                    **hashes,
                }
                for i in range(N_REGIONS)
            ],
        )
        pks = list(s.scalars(sa.select(Region.id).order_by(Region.id)))
        mvs = [
            ModelVersion(city_id=city.id, seed=0, data_revision=0, checkpoint_path="-")
            for _ in range(versions + 1)
        ]
        s.add_all(mvs)
        s.flush()
        return pks, [m.id for m in mvs]


def _old_copy(s: Any, mv: int, pks: list[int], vec: np.ndarray) -> None:
    """The previous PostgreSQL write: COPY BINARY with every row adapted by psycopg."""
    raw = s.connection().connection.driver_connection
    cols = "region_pk, model_version_id, kind, dim, vector, attention, imputed, revision"
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY embeddings ({cols}) FROM STDIN (FORMAT BINARY)") as cp,
    ):
        cp.set_types(["int4", "int4", "varchar", "int4", "float4[]", "json", "bool", "int4"])
        for pk, v in zip(pks, vec.tolist(), strict=True):
            cp.write_row((pk, mv, "fused", DIM, v, None, False, 1))


def run_backend(url: str, rows: int, sample: int) -> dict[str, Any]:
    engine = create_engine(url)
    upgrade(engine)
    versions = max(1, rows // N_REGIONS)
    pks, mvs = _setup(engine, versions + 1)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(N_REGIONS, DIM)).astype(np.float32)
    pg = engine.dialect.name == "postgresql"
    out: dict[str, Any] = {"rows": versions * N_REGIONS, "dim": DIM}

    t0 = time.perf_counter()
    with transaction(engine) as s:
        for mv in mvs[:versions]:
            put_embeddings(s, mv, "fused", pks, vec, 1)
    dt = time.perf_counter() - t0
    out["write_rows_per_s"], out["write_s"] = round(versions * N_REGIONS / dt), round(dt, 2)

    # with attention (the fused kind's JSON per row): the slower, variable-length path
    att = [{"remote": 0.2, "street": 0.2, "poi": 0.2, "counts": 0.2, "mobility": 0.2}] * N_REGIONS
    t0 = time.perf_counter()
    with transaction(engine) as s:
        put_embeddings(s, mvs[versions], "fused", pks, vec, 1, attention=att)
    dt = time.perf_counter() - t0
    out["write_with_attention_rows_per_s"] = round(N_REGIONS / dt)

    spare = mvs[versions + 1]
    n = min(sample, N_REGIONS)
    t0 = time.perf_counter()
    with transaction(engine) as s:
        for pk, v in zip(pks[:n], vec[:n], strict=True):
            s.add(
                Embedding(
                    region_pk=pk,
                    model_version_id=spare,
                    kind="fused",
                    dim=DIM,
                    vector=v,
                    revision=1,
                )
            )
            s.flush()  # one INSERT per row
        s.rollback()
    out["orm_row_by_row_rows_per_s"] = round(n / (time.perf_counter() - t0))
    out["sample_rows"] = n
    if pg:
        t0 = time.perf_counter()
        with transaction(engine) as s:
            _old_copy(s, spare, pks[:n], vec[:n])
            s.rollback()
        out["copy_write_row_rows_per_s"] = round(n / (time.perf_counter() - t0))

    t0 = time.perf_counter()
    with transaction(engine) as s:
        total = 0
        for mv in mvs[:versions]:
            ids, mat = load_embeddings(s, mv, "fused")
            total += len(ids)
    dt = time.perf_counter() - t0
    assert total == versions * N_REGIONS and mat.shape == (N_REGIONS, DIM)
    assert np.allclose(mat, vec)  # region ids r000000.. sort as the pks were made
    out["read_rows_per_s"], out["read_s"] = round(total / dt), round(dt, 2)
    if pg:
        t0 = time.perf_counter()
        with transaction(engine) as s:
            blobs = (
                s.execute(
                    sa.select(dialect.vector_wire(Embedding.vector, "postgresql")).where(
                        Embedding.model_version_id.in_(mvs[:versions])
                    )
                )
                .scalars()
                .all()
            )
            old = dialect.decode_vectors(list(blobs), DIM, "postgresql")
        out["read_array_send_rows_per_s"] = round(len(old) / (time.perf_counter() - t0))
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--backends", default="postgis,spatialite")
    ap.add_argument(
        "--pg-admin",
        default=os.environ.get(
            "MUSECL_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
        ),
    )
    args = ap.parse_args()
    out: dict[str, Any] = {
        "benchmark": "bulk_io",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    backends = [b.strip() for b in args.backends.split(",")]
    if "postgis" in backends:
        admin = sa.create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
        db = f"musecl_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{db}"')
        url = sa.engine.make_url(args.pg_admin).set(database=db)
        try:
            out["postgis"] = run_backend(
                url.render_as_string(hide_password=False), args.rows, args.sample
            )
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            admin.dispose()
        print(json.dumps(out["postgis"]), file=__import__("sys").stderr, flush=True)
    if "spatialite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            out["spatialite"] = run_backend(
                f"sqlite:///{Path(tmp) / 'bulk.sqlite'}", args.rows, args.sample
            )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
