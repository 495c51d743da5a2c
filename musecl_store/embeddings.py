"""Bulk reads and writes of embedding vectors.

Reading never parses rows one by one: the vectors come back as raw bytes (SpatiaLite's BLOB,
PostgreSQL's ``array_send(real[])``) and become one numpy matrix with a single ``frombuffer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from musecl_store import dialect
from musecl_store.errors import InputError
from musecl_store.tables import EMBEDDING_KINDS, Embedding, Region


def _check_kind(kind: str) -> None:
    if kind not in EMBEDDING_KINDS:
        raise InputError(
            f"embedding kind must be one of {', '.join(EMBEDDING_KINDS)}, not {kind!r}"
        )


def put_embeddings(
    session: Session,
    model_version_id: int,
    kind: str,
    region_pks: Sequence[int],
    vectors: np.ndarray,
    revision: int,
    attention: Sequence[dict[str, float] | None] | None = None,
    imputed: Sequence[bool] | None = None,
) -> int:
    """Insert one vector per region (rows of ``vectors``); returns the number of rows.

    On PostgreSQL the rows stream through ``COPY ... FROM STDIN (FORMAT BINARY)``; on
    SpatiaLite they go in batched multi-row inserts. Either way inside the caller's
    transaction.
    """
    _check_kind(kind)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(region_pks):
        raise ValueError(
            f"vectors must be (n_regions, dim); got {vectors.shape} for {len(region_pks)} regions"
        )
    if not np.isfinite(vectors).all():
        raise ValueError("embedding vectors must be finite (found NaN or inf)")
    att: Sequence[dict[str, float] | None] = attention or [None] * len(region_pks)
    imp: Sequence[bool] = imputed if imputed is not None else [False] * len(region_pks)
    if dialect.name(session) == "postgresql":
        return _copy_embeddings(
            session, model_version_id, kind, region_pks, vectors, revision, att, imp
        )
    rows: list[dict[str, Any]] = [
        {
            "region_pk": int(pk),
            "model_version_id": model_version_id,
            "kind": kind,
            "dim": vectors.shape[1],
            "vector": v,
            "attention": a,
            "imputed": bool(m),
            "revision": revision,
        }
        for pk, v, a, m in zip(region_pks, vectors, att, imp, strict=True)
    ]
    for i in range(0, len(rows), 5000):
        session.execute(insert(Embedding), rows[i : i + 5000])
    return len(rows)


def _copy_embeddings(
    session: Session,
    model_version_id: int,
    kind: str,
    region_pks: Sequence[int],
    vectors: np.ndarray,
    revision: int,
    attention: Sequence[dict[str, float] | None],
    imputed: Sequence[bool],
) -> int:
    from psycopg.types.json import Json

    session.flush()  # earlier ORM work must reach the server before the COPY
    raw = session.connection().connection.driver_connection
    assert raw is not None  # a live psycopg connection inside the caller's transaction
    dim = int(vectors.shape[1])
    cols = "region_pk, model_version_id, kind, dim, vector, attention, imputed, revision"
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY embeddings ({cols}) FROM STDIN (FORMAT BINARY)") as cp,
    ):
        cp.set_types(["int4", "int4", "varchar", "int4", "float4[]", "json", "bool", "int4"])
        for pk, v, a, m in zip(region_pks, vectors.tolist(), attention, imputed, strict=True):
            cp.write_row(
                (
                    int(pk),
                    model_version_id,
                    kind,
                    dim,
                    v,
                    None if a is None else Json(a),
                    bool(m),
                    revision,
                )
            )
    return len(region_pks)


def load_embeddings(
    session: Session, model_version_id: int, kind: str = "fused", city_id: int | None = None
) -> tuple[list[str], np.ndarray]:
    """All vectors of one model version and kind, ordered by region id.

    Returns:
        (region ids, float32 matrix of shape (n, dim)).
    """
    ids, mat, _ = load_embeddings_flags(session, model_version_id, kind, city_id)
    return ids, mat


def load_embeddings_flags(
    session: Session, model_version_id: int, kind: str = "fused", city_id: int | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Like :func:`load_embeddings`, with the ``imputed`` flag of each row (bool array)."""
    _check_kind(kind)
    name = dialect.name(session)
    stmt = (
        select(
            Region.region_id,
            Embedding.dim,
            Embedding.imputed,
            dialect.vector_wire(Embedding.vector, name),
        )
        .join(Region, Region.id == Embedding.region_pk)
        .where(Embedding.model_version_id == model_version_id, Embedding.kind == kind)
        .order_by(Region.region_id)
    )
    if city_id is not None:
        stmt = stmt.where(Region.city_id == city_id)
    rows = session.execute(stmt).all()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
    ids, dims, imputed, blobs = zip(*rows, strict=True)
    if len(set(dims)) > 1:
        raise ValueError(
            f"model version {model_version_id} has {kind} vectors of several "
            f"dimensions: {sorted(set(dims))}"
        )
    return (
        list(ids),
        dialect.decode_vectors(list(blobs), dims[0], name),
        np.array(imputed, dtype=bool),
    )
