"""The CSV files the CLI reads: points (``lon,lat``) for ``features``, and the queries of
``similar-many`` (a ``region_id`` column, or ``lon`` and ``lat``)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from musecl_store.errors import InputError


def read_points_csv(path: str | Path) -> list[tuple[float, float]]:
    """The ``lon,lat`` points of a CSV file (other columns are ignored; ``-``: stdin).

    Raises:
        InputError: a missing file or column, a short row or a bad number, naming the line.
    """
    return _read_csv(path, _points_parser)[1]


def read_queries_csv(
    path: str | Path,
) -> tuple[list[str], None] | tuple[None, list[tuple[float, float]]]:
    """The queries of :meth:`Store.similar_many` in a CSV file (``-``: stdin): a
    ``region_id`` column, or ``lon`` and ``lat`` columns (other columns are ignored).
    Returns (region ids, None) or (None, points).

    Raises:
        InputError: a missing file, no or both kinds of columns, a row without a region id,
            a short row or a bad number, naming the file and line.
    """
    from musecl_store.geo import short

    def parser(header: list[str] | None, name: str) -> Callable[[list[str], str], Any]:
        cols = header or []
        by_id, by_point = "region_id" in cols, "lon" in cols or "lat" in cols
        if by_id and by_point:
            raise InputError(
                f"{name}:1: has a region_id column and lon/lat columns; keep one kind of query"
            )
        if by_point:
            return _points_parser(header, name)
        if not by_id:
            raise InputError(
                f"{name}:1: needs a region_id column, or lon and lat columns "
                f"(found {short(header)})"
            )
        if cols.count("region_id") != 1:
            raise InputError(f"{name}:1: has {cols.count('region_id')} region_id columns")
        col = cols.index("region_id")

        def region_id(row: list[str], where: str) -> str:
            if col >= len(row) or not row[col].strip():
                raise InputError(f"{where}: the row has no region_id")
            return row[col].strip()

        return region_id

    header, rows = _read_csv(path, parser)
    if header is not None and "region_id" in header:
        return [str(r) for r in rows], None
    return None, [(float(x), float(y)) for x, y in rows]


def _points_parser(
    header: list[str] | None, name: str
) -> Callable[[list[str], str], tuple[float, float]]:
    """The reader of one row's lon/lat for :func:`_read_csv`."""
    from musecl_store.geo import GeoError, lonlat_ok, number, short

    if header is None or header.count("lon") != 1 or header.count("lat") != 1:
        raise InputError(
            f"{name}:1: needs lon and lat columns, one of each (found {short(header)})"
        )
    ilon, ilat = header.index("lon"), header.index("lat")

    def point(row: list[str], where: str) -> tuple[float, float]:
        if max(ilon, ilat) >= len(row):
            raise InputError(f"{where}: the row has no lon or lat field")
        try:
            x, y = number(row[ilon], "lon"), number(row[ilat], "lat")
        except GeoError as exc:
            raise InputError(f"{where}: lon/lat must be numbers ({exc})") from exc
        if not lonlat_ok(np.array([x]), np.array([y]))[0]:
            raise InputError(f"{where}: ({x}, {y}) is not a lon/lat point")
        return x, y

    return point


def _read_csv(
    path: str | Path, parser: Callable[[list[str] | None, str], Callable[[list[str], str], Any]]
) -> tuple[list[str] | None, list[Any]]:
    """(header, one value per non-empty row) of a CSV file (``-``: stdin, read whole).
    ``parser(header, name)`` checks the header and returns the row reader, which is called
    with the row and ``"NAME:LINE"`` for its messages.

    Raises:
        InputError: what the parser raises, a file that cannot be read, text that is not
            UTF-8 or not CSV, naming the file and line.
    """
    name = str(path)
    if name == "-":
        name = "stdin"
        data = getattr(sys.stdin, "buffer", None)
        raw = data.read() if data is not None else sys.stdin.read().encode()
        fh: TextIO = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="")
    else:
        file = Path(path)
        try:
            fh = file.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    rows = []
    line = 1
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            parse = parser(header, name)
            line = reader.line_num + 1
            for row in reader:
                if row:
                    rows.append(parse(row, f"{name}:{line}"))
                line = reader.line_num + 1  # where the next record starts
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}: not UTF-8 text near line {line} ({exc.reason})") from exc
        except csv.Error as exc:
            raise InputError(f"{name}:{line}: {exc}") from exc
    return header, rows
