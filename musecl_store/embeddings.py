"""Bulk reads and writes of embedding vectors.

Reading never parses rows one by one: the vectors come back as raw bytes (SpatiaLite's BLOB,
PostgreSQL's ``array_send(real[])``) and become one numpy matrix with a single ``frombuffer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_COPY_CHUNK = 8192  # rows per buffer handed to the server
_FLOAT4_OID = 700


def _copy_row_type(kind: bytes, dim: int, attention_null: bool) -> np.dtype[Any]:
    """One row of ``COPY embeddings (...) FROM STDIN (FORMAT BINARY)``, field by field: a
    field count, then each field's byte length and value (big-endian). The vector is a
    ``real[]`` in PostgreSQL's binary array format: 5 header words, then length + value for
    every element. Without attention the row ends in a NULL (length -1) and has a fixed size,
    so a whole batch is one numpy buffer."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("nfields", ">i2"),
        ("l_pk", ">i4"), ("pk", ">i4"),
        ("l_mv", ">i4"), ("mv", ">i4"),
        ("l_kind", ">i4"), ("kind", f"S{len(kind)}"),
        ("l_dim", ">i4"), ("dim", ">i4"),
        ("l_imputed", ">i4"), ("imputed", "u1"),
        ("l_revision", ">i4"), ("revision", ">i4"),
        ("l_vector", ">i4"), ("ndim", ">i4"), ("has_null", ">i4"), ("oid", ">i4"),
        ("n", ">i4"), ("lower", ">i4"),
        ("v", [("len", ">i4"), ("x", ">f4")], (dim,)),
    ]  # fmt: skip
    if attention_null:
        fields.append(("l_attention", ">i4"))
    return np.dtype(fields)


def _copy_batches(
    region_pks: Sequence[int],
    model_version_id: int,
    kind: str,
    vectors: np.ndarray,
    revision: int,
    attention: Sequence[dict[str, float] | None],
    imputed: Sequence[bool],
) -> Iterator[bytes]:
    """The binary COPY stream of these rows, in buffers of ``_COPY_CHUNK`` rows, built with
    numpy (no per-value Python work: ~10x faster than psycopg's row-by-row ``write_row``)."""
    n, dim = vectors.shape
    kind_b = kind.encode()
    no_attention = all(a is None for a in attention)
    dtype = _copy_row_type(kind_b, dim, no_attention)
    yield _COPY_HEADER
    for a in range(0, n, _COPY_CHUNK):
        b = min(n, a + _COPY_CHUNK)
        rec = np.zeros(b - a, dtype=dtype)
        rec["nfields"] = 8
        rec["l_pk"], rec["pk"] = 4, np.asarray(region_pks[a:b], dtype=np.int64)
        rec["l_mv"], rec["mv"] = 4, model_version_id
        rec["l_kind"], rec["kind"] = len(kind_b), kind_b
        rec["l_dim"], rec["dim"] = 4, dim
        rec["l_imputed"], rec["imputed"] = 1, np.asarray(imputed[a:b], dtype=bool)
        rec["l_revision"], rec["revision"] = 4, revision
        rec["l_vector"] = 20 + 8 * dim
        rec["ndim"], rec["oid"], rec["n"], rec["lower"] = 1, _FLOAT4_OID, dim, 1
        rec["v"]["len"] = 4
        rec["v"]["x"] = vectors[a:b]
        if no_attention:
            rec["l_attention"] = -1
            yield rec.tobytes()
            continue
        fixed, size = rec.tobytes(), dtype.itemsize
        parts: list[bytes] = []
        for i, att in enumerate(attention[a:b]):
            parts.append(fixed[i * size : (i + 1) * size])
            if att is None:
                parts.append(b"\xff\xff\xff\xff")
            else:
                text = json.dumps(att, separators=(",", ":")).encode()
                parts.append(len(text).to_bytes(4, "big") + text)
        yield b"".join(parts)
    yield _COPY_TRAILER


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
    session.flush()  # earlier ORM work must reach the server before the COPY
    raw = session.connection().connection.driver_connection
    assert raw is not None  # a live psycopg connection inside the caller's transaction
    cols = "region_pk, model_version_id, kind, dim, imputed, revision, vector, attention"
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY embeddings ({cols}) FROM STDIN (FORMAT BINARY)") as cp,
    ):
        for buf in _copy_batches(
            region_pks, model_version_id, kind, vectors, revision, attention, imputed
        ):
            cp.write(buf)
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
    if name == "postgresql":
        return _copy_load(session, model_version_id, kind, city_id)
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


def _copy_load(
    session: Session, model_version_id: int, kind: str, city_id: int | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """PostgreSQL: one ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` whose rows are chunks
    of up to 32,768 regions, each chunk's vectors, flags and ids aggregated on the server into
    a few byte strings. The client decodes a chunk with ``frombuffer`` as it arrives (no work
    per row in Python; never the whole result twice), then sorts by region id."""
    session.flush()
    raw = session.connection().connection.driver_connection
    assert raw is not None
    where = f"e.model_version_id = {int(model_version_id)} AND e.kind = '{kind}'"  # checked
    if city_id is not None:
        where += f" AND r.city_id = {int(city_id)}"
    order = "ORDER BY e.region_pk"
    query = (
        "COPY (SELECT max(e.dim),"
        f" string_agg(array_send(e.vector), ''::bytea {order}),"
        f" string_agg(CASE WHEN e.imputed THEN '\\x01'::bytea ELSE '\\x00'::bytea END, ''::bytea"
        f" {order}),"
        f" string_agg(int4send(octet_length(r.region_id)), ''::bytea {order}),"
        f" string_agg(convert_to(r.region_id, 'UTF8'), ''::bytea {order}),"
        " min(e.dim)"
        " FROM embeddings e JOIN regions r ON r.id = e.region_pk"
        f" WHERE {where} GROUP BY e.region_pk / 32768) TO STDOUT (FORMAT BINARY)"
    )
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    imputed: list[np.ndarray] = []
    pending = b""
    header = False
    with raw.cursor() as cur, cur.copy(query) as cp:
        for block in cp:  # PostgreSQL sends a message per row, here per chunk of regions
            pending = pending + bytes(block) if pending else bytes(block)
            if not header:
                if len(pending) < 19:
                    continue
                pending = pending[19 + int.from_bytes(pending[15:19], "big") :]
                header = True
            while True:
                parsed = _copy_fields(pending)
                if parsed is None:
                    break
                fields, pending = parsed
                dim = int.from_bytes(fields[0], "big")
                if dim != int.from_bytes(fields[5], "big"):
                    raise ValueError(
                        f"model version {model_version_id} has {kind} vectors of several dimensions"
                    )
                vectors.append(dialect.decode_pg_arrays(fields[1], len(fields[2]), dim))
                imputed.append(np.frombuffer(fields[2], dtype=np.uint8).astype(bool))
                ends = np.cumsum(np.frombuffer(fields[3], dtype=">i4")).tolist()
                names = fields[4]
                ids.extend(names[a:b].decode() for a, b in zip([0, *ends[:-1]], ends, strict=True))
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
    mat = np.concatenate(vectors)
    flags_all = np.concatenate(imputed)
    order_ = np.argsort(np.asarray(ids), kind="stable")
    return [ids[i] for i in order_], mat[order_], flags_all[order_]


def _copy_fields(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The fields of the first binary COPY row in ``data`` and the bytes after it; None when
    the row is not complete yet or ``data`` holds only the trailer."""
    if len(data) < 2 or data[:2] == b"\xff\xff":
        return None
    count = int.from_bytes(data[:2], "big")
    pos, out = 2, []
    for _ in range(count):
        if pos + 4 > len(data):
            return None
        length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
        if length < 0:
            raise ValueError("a NULL where a chunk of vectors was expected")
        if pos + 4 + length > len(data):
            return None
        out.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out, data[pos:]
