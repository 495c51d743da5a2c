"""Bulk reads and writes of embedding vectors.

Reading never parses rows one by one: the vectors come back as raw bytes (SpatiaLite's BLOB,
PostgreSQL's ``array_send(real[])``) and a batch of them becomes one numpy matrix with a
single ``frombuffer``. Readers stream: :func:`iter_embeddings` yields batches of
:data:`CHUNK_ROWS` rows from one query, so a whole city is never held twice.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import shapely
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from musecl_store.errors import InputError
from musecl_store.store import dialect
from musecl_store.store.tables import EMBEDDING_KINDS, Embedding, Region


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


CHUNK_ROWS = 20_000
"""Rows per batch of the streaming readers (:func:`iter_embeddings`, the exports, the index
build): their memory follows this, not the number of regions."""


class EmbeddingChunk(NamedTuple):
    """One batch of :func:`iter_embeddings`, its rows in region id order."""

    ids: list[str]
    vectors: np.ndarray  # float32, (n, dim)
    imputed: np.ndarray  # bool, (n,)
    geometries: np.ndarray | None  # shapely geometries of the regions, when asked for
    attention: list[Any] | None  # each row's attention (None where it has none), when asked


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
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    imputed: list[np.ndarray] = []
    for chunk in iter_embeddings(session, model_version_id, kind, city_id):
        ids.extend(chunk.ids)
        vectors.append(chunk.vectors)
        imputed.append(chunk.imputed)
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
    mat = vectors[0] if len(vectors) == 1 else np.concatenate(vectors)
    return ids, mat, np.concatenate(imputed)


class _Want(NamedTuple):
    """What :func:`iter_embeddings` reads, in batches of ``size`` rows."""

    model_version_id: int
    kind: str
    city_id: int | None
    size: int
    geometry: bool
    attention: bool


def iter_embeddings(
    session: Session,
    model_version_id: int,
    kind: str = "fused",
    city_id: int | None = None,
    *,
    geometry: bool = False,
    attention: bool = False,
    chunk_rows: int | None = None,
) -> Generator[EmbeddingChunk, None, None]:
    """The vectors of one model version and kind in region id order (code point order of
    the ids, on both backends), in batches of up to ``chunk_rows`` (default
    :data:`CHUNK_ROWS`) rows, from one query: memory follows the batch, not the city.
    ``geometry`` and ``attention`` add each region's geometry and each row's attention.

    On PostgreSQL it is one ``COPY (SELECT ...) TO STDOUT``: the connection is busy until the
    iterator is exhausted (issue no other query meanwhile). On SpatiaLite the rows come from
    a cursor, a batch at a time.

    Raises:
        ValueError: the vectors are not all of one dimension.
    """
    _check_kind(kind)
    size = max(1, int(chunk_rows or CHUNK_ROWS))
    want = _Want(model_version_id, kind, city_id, size, geometry, attention)
    read = _copy_chunks if dialect.name(session) == "postgresql" else _select_chunks
    chunks = read(session, want)
    dim: int | None = None
    for chunk in chunks:
        if dim is None:
            dim = int(chunk.vectors.shape[1])
        elif chunk.vectors.shape[1] != dim:
            raise ValueError(
                f"model version {model_version_id} has {kind} vectors of several "
                f"dimensions: {sorted({dim, int(chunk.vectors.shape[1])})}"
            )
        yield chunk


def _select_chunks(session: Session, want: _Want) -> Iterator[EmbeddingChunk]:
    model_version_id, kind, city_id, size, geometry, attention = want
    name = dialect.name(session)
    columns: list[Any] = [
        Region.region_id,
        Embedding.dim,
        Embedding.imputed,
        dialect.vector_wire(Embedding.vector, name),
    ]
    if geometry:
        columns.append(Region.geom)
    if attention:
        columns.append(Embedding.attention)
    stmt = (
        select(*columns)
        .join(Region, Region.id == Embedding.region_pk)
        .where(Embedding.model_version_id == model_version_id, Embedding.kind == kind)
        .order_by(Region.region_id)
    )
    if city_id is not None:
        stmt = stmt.where(Region.city_id == city_id)
    result = session.execute(stmt.execution_options(yield_per=size))
    try:
        for part in result.partitions():
            cols = list(zip(*part, strict=True))
            ids, dims, imputed, blobs = cols[:4]
            if len(set(dims)) > 1:
                raise ValueError(
                    f"model version {model_version_id} has {kind} vectors of several "
                    f"dimensions: {sorted(set(dims))}"
                )
            yield EmbeddingChunk(
                list(ids),
                dialect.decode_vectors(list(blobs), dims[0], name),
                np.array(imputed, dtype=bool),
                shapely.from_wkb([g.data for g in cols[4]]) if geometry else None,
                list(cols[-1]) if attention else None,
            )
    finally:
        result.close()


def _copy_chunks(session: Session, want: _Want) -> Iterator[EmbeddingChunk]:
    """PostgreSQL: one ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` whose rows are the
    batches, in region id order: each batch's vectors, flags, ids (and geometries, attention)
    aggregated on the server into a few byte strings, which the client decodes with
    ``frombuffer`` as they arrive (no work per row in Python but splitting the ids)."""
    model_version_id, kind, city_id, size, geometry, attention = want
    session.flush()
    raw = session.connection().connection.driver_connection
    assert raw is not None
    where = f"e.model_version_id = {int(model_version_id)} AND e.kind = '{kind}'"  # checked
    if city_id is not None:
        where += f" AND r.city_id = {int(city_id)}"
    varying = ["convert_to(t.region_id, 'UTF8')"]  # variable-length fields, NULL allowed
    if geometry:
        varying.append("ST_AsBinary(t.geom)")
    if attention:
        varying.append("convert_to(t.attention::text, 'UTF8')")
    order = "ORDER BY t.n"
    aggregates = "".join(
        f", string_agg(int4send(coalesce(octet_length({x}), -1)), ''::bytea {order}),"
        f" string_agg({x}, ''::bytea {order})"
        for x in varying
    )
    query = (
        "COPY (SELECT min(t.dim), max(t.dim),"
        f" string_agg(array_send(t.vector), ''::bytea {order}),"
        f" string_agg(CASE WHEN t.imputed THEN '\\x01'::bytea ELSE '\\x00'::bytea END,"
        f" ''::bytea {order}){aggregates}"
        " FROM (SELECT e.dim, e.vector, e.imputed, r.region_id, r.geom, e.attention,"
        ' row_number() OVER (ORDER BY r.region_id COLLATE "C", e.region_pk) - 1 AS n'
        f" FROM embeddings e JOIN regions r ON r.id = e.region_pk WHERE {where}) t"
        f" GROUP BY t.n / {size} ORDER BY t.n / {size}) TO STDOUT (FORMAT BINARY)"
    )
    pending = b""
    header = False
    with raw.cursor() as cur, cur.copy(query) as cp:
        for block in cp:  # PostgreSQL sends a message per row, here per batch of regions
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
                if dim != int.from_bytes(fields[1], "big"):
                    raise ValueError(
                        f"model version {model_version_id} has {kind} vectors of several dimensions"
                    )
                n = len(fields[3])
                values = [_split(fields[i], fields[i + 1]) for i in range(4, len(fields), 2)]
                yield EmbeddingChunk(
                    [b.decode() for b in values[0] if b is not None],
                    dialect.decode_pg_arrays(fields[2], n, dim),
                    np.frombuffer(fields[3], dtype=np.uint8).astype(bool),
                    shapely.from_wkb(values[1]) if geometry else None,
                    [None if b is None else json.loads(b) for b in values[-1]]
                    if attention
                    else None,
                )


def _split(lengths: bytes, data: bytes) -> list[bytes | None]:
    """Values of a ``string_agg`` of byte strings, given the ``string_agg`` of their big-endian
    int32 lengths (-1: NULL)."""
    out: list[bytes | None] = []
    pos = 0
    for length in np.frombuffer(lengths, dtype=">i4").tolist():
        if length < 0:
            out.append(None)
        else:
            out.append(data[pos : pos + length])
            pos += length
    return out


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
