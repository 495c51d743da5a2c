"""Queries over lists of ids of any length: ``IN (...)`` lists of a bounded size.

SQLite allows 32,766 bound parameters in one statement and PostgreSQL plans long lists
badly, so every query by a list of ids (region pks, region ids, content hashes) goes through
these, in slices of :data:`IN_CHUNK`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.orm import Session

T = TypeVar("T")

IN_CHUNK = 5000  # ids per IN (...) list


def chunked(items: Sequence[T], n: int | None = None) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``n`` (default :data:`IN_CHUNK`, read at call time)."""
    n = n or IN_CHUNK
    for a in range(0, len(items), n):
        yield items[a : a + n]


def rows_in(session: Session, stmt: Any, column: Any, values: Sequence[Any]) -> list[Any]:
    """The rows of ``stmt`` whose ``column`` is one of ``values`` (one query per slice)."""
    out: list[Any] = []
    for chunk in chunked(values):
        out.extend(session.execute(stmt.where(column.in_(chunk))).all())
    return out


def delete_in(
    session: Session, table: Any, column: Any, values: Sequence[Any], *where: Any
) -> None:
    """Delete the rows of ``table`` whose ``column`` is one of ``values`` (and ``where``)."""
    for chunk in chunked(values):
        session.execute(delete(table).where(*where, column.in_(chunk)))
