"""indicators.csv: socioeconomic values per region, by indicator name (blank: unknown)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from musecl_store import geo
from musecl_store.bundle.csvfile import CsvReader
from musecl_store.bundle.files import INDICATORS, MAX_NAME, is_file
from musecl_store.bundle.report import Report
from musecl_store.errors import BundleError


class Indicators(Mapping[int, dict[str, float]]):
    """Indicator values per region index, as a dense array (NaN = unknown): a mapping of the
    regions that have at least one value to {name: value} in column order."""

    def __init__(self, names: list[str], table: np.ndarray):
        self.names, self.table = names, table  # table: (regions, names)
        self._has = np.flatnonzero(~np.isnan(table).all(axis=1)) if table.size else np.empty(0, int)

    def __getitem__(self, i: int) -> dict[str, float]:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.table):
            raise KeyError(i)
        row = self.table[i].tolist()
        out = {n: v for n, v in zip(self.names, row, strict=True) if v == v}  # v != NaN
        if not out:
            raise KeyError(i)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._has.tolist())

    def __len__(self) -> int:
        return len(self._has)


def read_indicators(root: Path, index: dict[str, int], report: Report) -> Indicators:
    """The indicator values of indicators.csv (none when the file is absent) per region
    index (``index``: region id -> index); unusable rows and cells are skipped and reported."""
    if not is_file(root / INDICATORS):
        return Indicators([], np.empty((len(index), 0)))
    reader = CsvReader(root, INDICATORS, ["region_id"], report)
    names = [c for c in reader.columns if c != "region_id"]
    if not names:
        raise BundleError("has no indicator column besides region_id", file=INDICATORS, line=1)
    if any(not n for n in names):
        raise BundleError("has an indicator column with an empty name", file=INDICATORS, line=1)
    long = [n for n in names if len(n) > MAX_NAME]
    if long:
        raise BundleError(
            f"indicator name {geo.short(long[0])} is longer than {MAX_NAME} characters",
            file=INDICATORS,
            line=1,
        )
    values = np.full((len(index), len(names)), np.nan)
    seen = np.zeros(len(index), np.int64)  # per region index: the line it was on, 0: not yet
    for line, row in reader:
        rid = row["region_id"].strip()
        if rid not in index:
            report.skip(
                INDICATORS,
                line,
                f"region_id {rid!r} is not a region of this bundle",
                kind="unknown region_id",
            )
            continue
        i = index[rid]
        if seen[i]:
            report.skip(
                INDICATORS,
                line,
                f"region_id {rid!r} appears twice (first on line {seen[i]})",
                kind="duplicate region_id",
            )
            continue
        seen[i] = line
        for k, n in enumerate(names):
            cell = row[n].strip()
            if not cell:
                continue  # blank = unknown
            try:
                values[i, k] = geo.number(cell, f"indicator {n!r} value")
            except ValueError as exc:
                report.skip(INDICATORS, line, str(exc), kind="non-numeric indicator value")
    return Indicators(names, values)
