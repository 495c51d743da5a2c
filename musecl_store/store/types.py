"""Column types shared by both dialects."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import LargeBinary
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import REAL, TypeDecorator, TypeEngine


class Vector(TypeDecorator[np.ndarray]):
    """A float32 embedding vector, readable from SQL on both backends.

    PostgreSQL stores it as ``real[]`` (``vector[1]`` is its first element in SQL).
    SpatiaLite stores it as a BLOB of little-endian IEEE-754 float32 values, ``4 * dim``
    bytes, no header; ``length(vector) / 4`` is the dimension. Python sees a 1-D
    ``np.float32`` array either way.
    """

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(REAL))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
        if not np.isfinite(arr).all():
            raise ValueError("embedding vectors must be finite (found NaN or inf)")
        if dialect.name == "postgresql":
            return arr.tolist()
        return arr.astype("<f4", copy=False).tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return np.asarray(value, dtype=np.float32)
        return np.frombuffer(value, dtype="<f4").astype(np.float32)
