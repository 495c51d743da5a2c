"""pois.csv: the points of interest, held column by column, each in its region."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS

from musecl_store import geo
from musecl_store.bundle.csvfile import CsvReader, text_problem
from musecl_store.bundle.files import MAX_NAME, POIS, is_file
from musecl_store.bundle.points import PointBatch
from musecl_store.bundle.records import HashedRecord
from musecl_store.bundle.report import Report
from musecl_store.errors import BundleNotFoundError
from musecl_store.hashing import digest_bytes
from musecl_store.progress import progress


@dataclass(frozen=True)
class PoiRecord(HashedRecord):
    line: int
    poi_id: str
    lon: float
    lat: float
    name: str
    category: str
    text: str
    region: int

    HASHED = ("poi_id", "lon", "lat", "name", "category", "text")


_SEP = "\x00"  # joins a POI's text fields in PoiTable: no stored text holds a NUL


class PoiTable:
    """The POIs of a bundle, column by column: numbers in arrays, the text fields of each
    chunk of rows in one UTF-8 blob, and each POI's content hash as 16 raw bytes. A list of
    :class:`PoiRecord` costs ~0.5 KB a POI; this, about the size of the text.

    Iterating yields :class:`PoiRecord` (made on the fly), in the order of the file."""

    def __init__(self) -> None:
        self._line: list[np.ndarray] = []
        self._lon: list[np.ndarray] = []
        self._lat: list[np.ndarray] = []
        self._region: list[np.ndarray] = []
        self._hash: list[np.ndarray] = []
        self._text: list[bytes] = []

    def append(
        self,
        rows: list[tuple[int, str, str, str, str]],
        lon: np.ndarray,
        lat: np.ndarray,
        region: np.ndarray,
    ) -> None:
        """Add a chunk: rows of (line, poi_id, name, category, text) with their lon, lat and
        region index; rows whose region is negative are left out."""
        keep = np.flatnonzero(region >= 0)
        if keep.size == 0:
            return
        lon, lat = lon[keep].astype(float), lat[keep].astype(float)
        kept = [rows[i] for i in keep.tolist()]
        hashes = np.empty((len(kept), 16), dtype=np.uint8)
        for j, ((_, pid, name, cat, text), x, y) in enumerate(
            zip(kept, lon.tolist(), lat.tolist(), strict=True)
        ):
            hashes[j] = np.frombuffer(digest_bytes(pid, x, y, name, cat, text), np.uint8)
        self._line.append(np.array([r[0] for r in kept], dtype=np.int64))
        self._lon.append(lon)
        self._lat.append(lat)
        self._region.append(region[keep].astype(np.int64))
        self._hash.append(hashes)
        self._text.append(_SEP.join(f for r in kept for f in r[1:]).encode("utf-8"))

    def __len__(self) -> int:
        return sum(len(a) for a in self._line)

    def with_hashes(self) -> Iterator[tuple[PoiRecord, bytes]]:
        """Each POI (made on the fly) and its content hash as 16 raw bytes."""
        for k, blob in enumerate(self._text):
            fields = blob.decode("utf-8").split(_SEP)
            lines, regions = self._line[k].tolist(), self._region[k].tolist()
            lons, lats = self._lon[k].tolist(), self._lat[k].tolist()
            hashes = self._hash[k].tobytes()
            for j, line in enumerate(lines):
                pid, name, cat, text = fields[4 * j : 4 * j + 4]
                record = PoiRecord(line, pid, lons[j], lats[j], name, cat, text, regions[j])
                yield record, hashes[16 * j : 16 * j + 16]

    def __iter__(self) -> Iterator[PoiRecord]:
        for record, _ in self.with_hashes():
            yield record

    @property
    def region(self) -> np.ndarray:
        """The region index of every POI."""
        return _concat(self._region, np.int64)

    @property
    def hashes(self) -> np.ndarray:
        """The content hash of every POI, (n, 16) raw bytes (``PoiRecord.content_hash`` is
        their hex)."""
        return np.concatenate(self._hash) if self._hash else np.empty((0, 16), np.uint8)


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


class _SeenIds:
    """The first line of each poi_id accepted so far, for finding duplicates in bounded
    memory (3M ids: ~95 MB, not the ~370 MB of a dict). The ids accepted since the last
    :meth:`freeze` are in a dict; older ones cost 24 bytes plus their UTF-8 each: their
    ``id_hash`` in one sorted array (a match is only a candidate, confirmed by comparing the
    id itself), their lines, and the ids NUL-joined in one blob per chunk (no accepted poi_id
    holds a NUL)."""

    def __init__(self, id_hash: Callable[[str], int]) -> None:
        self._id_hash = id_hash  # str -> 64-bit int
        self._recent: dict[str, int] = {}
        self._hash = np.empty(0, np.int64)  # id_hash of every frozen id, sorted
        self._seq = np.empty(0, np.int64)  # the index of each of those ids, in that order
        self._first: list[int] = []  # the index of the first id of each chunk
        self._lines: list[np.ndarray] = []  # per chunk, the line of each id
        self._blobs: list[bytes] = []  # per chunk, its ids NUL-joined
        self._starts: dict[int, np.ndarray] = {}  # per chunk, where each id starts (on demand)
        self._n = 0

    def get(self, poi_id: str) -> int | None:
        """The line ``poi_id`` was first accepted on, or None."""
        line = self._recent.get(poi_id)
        if line is not None or not self._n:
            return line
        h = self._id_hash(poi_id)
        i = int(self._hash.searchsorted(h))
        while i < self._n and int(self._hash[i]) == h:
            k, j = self._locate(int(self._seq[i]))
            if self._id(k, j) == poi_id:
                return int(self._lines[k][j])
            i += 1
        return None

    def add(self, poi_id: str, line: int) -> None:
        self._recent[poi_id] = line

    def freeze(self) -> None:
        """Move the ids added since the last call into the compact arrays."""
        if not self._recent:
            return
        n = len(self._recent)
        hashes = np.fromiter((self._id_hash(p) for p in self._recent), np.int64, n)
        order = np.argsort(hashes, kind="stable")
        hashes, seq = hashes[order], order.astype(np.int64) + self._n
        at = self._hash.searchsorted(hashes)
        self._hash = np.insert(self._hash, at, hashes)  # one at a time: a lower peak
        self._seq = np.insert(self._seq, at, seq)
        self._first.append(self._n)
        self._lines.append(np.fromiter(self._recent.values(), np.int64, n))
        self._blobs.append("\x00".join(self._recent).encode("utf-8"))
        self._n += n
        self._recent = {}

    def _locate(self, seq: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._first, seq) - 1
        return k, seq - self._first[k]

    def _id(self, k: int, j: int) -> str:
        blob = self._blobs[k]
        starts = self._starts.get(k)
        if starts is None:
            nul = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
            starts = self._starts[k] = np.concatenate(([0], nul + 1)).astype(np.int64)
        start = int(starts[j])
        end = int(starts[j + 1]) - 1 if j + 1 < len(starts) else len(blob)
        return blob[start:end].decode("utf-8")


def read_pois(
    root: Path,
    crs: CRS,
    locator: geo.RegionLocator,
    report: Report,
    show: bool | None,
    *,
    chunk: int,
    id_hash: Callable[[str], int],
) -> PoiTable:
    """The POIs of pois.csv that lie in a region, located ``chunk`` rows at a time; rows
    that cannot be used are skipped and reported (``id_hash``: for the duplicate check)."""
    if not is_file(root / POIS):
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    reader = CsvReader(root, POIS, ["poi_id", "lon", "lat", "name", "category"], report)
    limits = {"poi_id": MAX_NAME, "category": MAX_NAME, "name": None, "text": None}
    batch = PointBatch(POIS, crs, geo.Reprojector(crs))
    rows: list[tuple[int, str, str, str, str]] = []
    seen = _SeenIds(id_hash)  # poi_id -> first line: the one thing here that grows with the file
    out = PoiTable()

    def flush() -> None:
        lon, lat, region = batch.resolve(locator, report, "poi")
        out.append(rows, lon, lat, region)
        rows.clear()
        seen.freeze()

    for line, row in progress(reader, desc="pois", enabled=show, unit="row"):
        poi_id, category = row["poi_id"].strip(), row["category"].strip()
        if not poi_id:
            report.skip(POIS, line, "empty poi_id")
            continue
        first = seen.get(poi_id)
        if first is not None:
            report.skip(
                POIS,
                line,
                f"poi_id {poi_id!r} is not unique (first on line {first})",
                kind="duplicate poi_id",
            )
            continue
        if not category:
            report.skip(POIS, line, "empty category")
            continue
        problem = text_problem(row, limits)
        if problem:
            report.skip(POIS, line, f"{problem}; the store cannot hold it", kind="unstorable text")
            continue
        try:
            x, y = geo.number(row["lon"], "lon"), geo.number(row["lat"], "lat")
        except ValueError as exc:
            report.skip(POIS, line, str(exc), kind="unparsable coordinate")
            continue
        seen.add(poi_id, line)
        batch.add(line, x, y)
        rows.append((line, poi_id, row["name"], category, row.get("text", "")))
        if len(rows) >= chunk:
            flush()
    flush()
    batch.check_crs()
    return out
