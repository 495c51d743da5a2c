"""The few places where PostGIS and SpatiaLite need different SQL."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import column, func, select, table
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

# array_send() of a 1-D real[] without NULLs: a 20-byte header (ndim, has-null flag, element
# type oid, length, lower bound), then per element a big-endian int32 length (always 4) and a
# big-endian float4. Reading that with one numpy view is what makes bulk loads fast.
_PG_ARRAY_HEADER = 20


def name(bind: Session | Connection | Dialect) -> str:
    """``"postgresql"`` or ``"sqlite"`` for a session, connection or dialect."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    if isinstance(bind, Connection):
        return bind.dialect.name
    return bind.name


def vector_wire(column: Any, dialect_name: str) -> ColumnElement[Any]:
    """A SQL expression that returns a vector column as raw bytes for :func:`decode_vectors`."""
    if dialect_name == "postgresql":
        return func.array_send(column)
    return column


def decode_vectors(blobs: list[bytes], dim: int, dialect_name: str) -> np.ndarray:
    """Decode the bytes that :func:`vector_wire` selected into one ``(n, dim)`` float32 matrix.

    Raises:
        ValueError: when a row's size does not match ``dim`` (mixed dimensions or NULLs).
    """
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    data = b"".join(bytes(b) for b in blobs)
    if dialect_name == "postgresql":
        return decode_pg_arrays(data, len(blobs), dim)
    if len(data) != 4 * dim * len(blobs):
        raise ValueError(f"vectors are not all of dimension {dim}")
    return np.frombuffer(data, dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def decode_pg_arrays(data: bytes, n: int, dim: int) -> np.ndarray:
    """``n`` back-to-back ``array_send(real[])`` values of ``dim`` elements as an ``(n, dim)``
    float32 matrix (each: a 20-byte header, then a length and a value per element).

    Raises:
        ValueError: when the bytes are not ``n`` arrays of ``dim`` elements.
    """
    if len(data) != n * (_PG_ARRAY_HEADER + 8 * dim):
        raise ValueError(f"vectors are not all of dimension {dim}")
    dtype = np.dtype([("head", f"V{_PG_ARRAY_HEADER}"), ("v", [("n", ">i4"), ("x", ">f4")], dim)])
    return np.frombuffer(data, dtype=dtype)["v"]["x"].astype(np.float32)


# SpatiaLite's R*Tree is only used through this virtual table (the planner never picks it).
_SPATIAL_INDEX = table(
    "SpatialIndex",
    column("ROWID"),
    column("f_table_name"),
    column("f_geometry_column"),
    column("search_frame"),
)


def _spatialite_frame(table_name: str, col: Any, pk: Any, frame: Any) -> ColumnElement[bool]:
    rows: Select[Any] = select(_SPATIAL_INDEX.c.ROWID).where(
        _SPATIAL_INDEX.c.f_table_name == table_name,
        _SPATIAL_INDEX.c.f_geometry_column == col.key,
        _SPATIAL_INDEX.c.search_frame == frame,
    )
    return pk.in_(rows.scalar_subquery())


def in_bbox(
    table_name: str, col: Any, pk: Any, bbox: tuple[float, float, float, float], dialect_name: str
) -> ColumnElement[bool]:
    """A WHERE clause that keeps rows whose geometry's box meets ``bbox``, through the spatial
    index: GiST's ``&&`` on PostGIS, the R*Tree behind SpatiaLite's ``SpatialIndex`` table.

    It is a prefilter (boxes, not shapes): callers apply the exact test to what it keeps.
    """
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if dialect_name == "postgresql":
        return col.op("&&")(func.ST_MakeEnvelope(minx, miny, maxx, maxy, 4326))
    return _spatialite_frame(table_name, col, pk, func.BuildMbr(minx, miny, maxx, maxy, 4326))


def index_join(
    table_name: str, col: Any, pk: Any, other: Any, dialect_name: str
) -> ColumnElement[bool]:
    """Join condition: rows of ``table_name`` whose box meets geometry ``other``'s, through the
    spatial index (a prefilter, like :func:`in_bbox`)."""
    if dialect_name == "postgresql":
        return col.op("&&")(other)
    return _spatialite_frame(table_name, col, pk, other)


def no_index(column: Any, dialect_name: str) -> ColumnElement[Any]:
    """``column`` in a form the planner cannot match to an index, on SQLite.

    SQLite's sorter keeps what it sorts in memory (pysqlite3 is built with TEMP_STORE=3):
    ``ORDER BY region_pk`` after a search of the (model version, kind, revision) index would
    hold every vector at once. ``column + 0`` keeps the planner off that index, so it scans
    the unique (region_pk, model_version_id, kind) one, already in order. PostgreSQL sorts on
    disk when it must: the column is left as it is.
    """
    return column + 0 if dialect_name == "sqlite" else column
