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
from musecl_store.tables import EMBEDDING_KINDS, Embedding, Region


def _check_kind(kind: str) -> None:
    if kind not in EMBEDDING_KINDS:
        raise ValueError(
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
    """Insert one vector per region (rows of ``vectors``); returns the number of rows."""
    _check_kind(kind)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(region_pks):
        raise ValueError(
            f"vectors must be (n_regions, dim); got {vectors.shape} for {len(region_pks)} regions"
        )
    att: Sequence[dict[str, float] | None] = attention or [None] * len(region_pks)
    imp: Sequence[bool] = imputed if imputed is not None else [False] * len(region_pks)
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


def load_embeddings(
    session: Session, model_version_id: int, kind: str = "fused", city_id: int | None = None
) -> tuple[list[str], np.ndarray]:
    """All vectors of one model version and kind, ordered by region id.

    Returns:
        (region ids, float32 matrix of shape (n, dim)).
    """
    _check_kind(kind)
    name = dialect.name(session)
    stmt = (
        select(Region.region_id, Embedding.dim, dialect.vector_wire(Embedding.vector, name))
        .join(Region, Region.id == Embedding.region_pk)
        .where(Embedding.model_version_id == model_version_id, Embedding.kind == kind)
        .order_by(Region.region_id)
    )
    if city_id is not None:
        stmt = stmt.where(Region.city_id == city_id)
    rows = session.execute(stmt).all()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    ids, dims, blobs = zip(*rows, strict=True)
    if len(set(dims)) > 1:
        raise ValueError(
            f"model version {model_version_id} has {kind} vectors of several "
            f"dimensions: {sorted(set(dims))}"
        )
    return list(ids), dialect.decode_vectors(list(blobs), dims[0], name)
