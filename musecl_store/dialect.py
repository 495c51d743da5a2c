"""The few places where PostGIS and SpatiaLite need different SQL."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func, literal_column, select, text
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
        row = _PG_ARRAY_HEADER + 8 * dim
        if len(data) != row * len(blobs):
            raise ValueError(f"vectors are not all of dimension {dim}")
        dtype = np.dtype(
            [("head", f"V{_PG_ARRAY_HEADER}"), ("v", [("n", ">i4"), ("x", ">f4")], dim)]
        )
        return np.frombuffer(data, dtype=dtype)["v"]["x"].astype(np.float32)
    if len(data) != 4 * dim * len(blobs):
        raise ValueError(f"vectors are not all of dimension {dim}")
    return np.frombuffer(data, dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def in_bbox(
    table: str, column: Any, pk: Any, bbox: tuple[float, float, float, float], dialect_name: str
) -> ColumnElement[bool]:
    """A WHERE clause that keeps rows whose geometry's box meets ``bbox``, through the spatial
    index: GiST's ``&&`` on PostGIS, the R*Tree behind SpatiaLite's ``SpatialIndex`` table.

    It is a prefilter (boxes, not shapes): callers apply the exact test to what it keeps.
    """
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if dialect_name == "postgresql":
        return column.op("&&")(func.ST_MakeEnvelope(minx, miny, maxx, maxy, 4326))
    frame: Select[Any] = (
        select(literal_column("ROWID"))
        .select_from(text("SpatialIndex"))
        .where(
            literal_column("f_table_name") == table,
            literal_column("f_geometry_column") == column.key,
            literal_column("search_frame") == func.BuildMbr(minx, miny, maxx, maxy, 4326),
        )
    )
    return pk.in_(frame.scalar_subquery())
