"""Reading a city bundle (``docs/city-bundle.md``) into validated, lon/lat records.

Reading touches no database. Fatal defects (a missing required file or column, bad regions,
an unknown or wrong CRS) raise :class:`~musecl_store.errors.BundleError` before anything is
written; row-level defects are skipped and recorded in the
:class:`~musecl_store.bundle.report.Report` with file, line and reason.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h3
import numpy as np
import shapely
from PIL import Image as PILImage
from pyproj import CRS
from shapely.geometry import MultiPolygon

from musecl_store import geo
from musecl_store.bundle.report import MAX_LISTED, Report
from musecl_store.errors import BundleError, BundleNotFoundError
from musecl_store.hashing import digest, digest_bytes
from musecl_store.progress import progress
from musecl_store.text import bad_char

CITY = "city.json"
REGIONS = "regions.geojson"
BOUNDARY = "boundary.geojson"
POIS = "pois.csv"
TRIPS = "trips.csv"
IMAGES = "images.csv"
INDICATORS = "indicators.csv"
CENSUS_DIR = "census"

DEFAULT_H3_RESOLUTION = 8
MAX_REGION_ID = 100
MAX_NAME = 200  # the store's limit on city names, poi_ids, categories, indicator/layer names
MAX_CRS_NAME = 64  # the store's limit on a CRS name; a longer one is stored as its EPSG code
MAX_H3_CELLS = 1_000_000  # a boundary tiled into more cells than this is refused
_CHUNK = 100_000
_WRONG_CRS_SHARE = 0.5  # more than this share of a file's points off the globe: the CRS is wrong


@dataclass(frozen=True)
class CitySpec:
    name: str
    crs: str
    h3_resolution: int | None
    meta: dict[str, Any]


@dataclass
class RegionRecord:
    """A region; its geometry is kept as WKB (a few times smaller than a shapely object)."""

    region_id: str
    wkb: bytes
    h3_cell: str | None = None

    @property
    def geom(self) -> MultiPolygon:
        return shapely.from_wkb(self.wkb)


@dataclass(frozen=True)
class PoiRecord:
    line: int
    poi_id: str
    lon: float
    lat: float
    name: str
    category: str
    text: str
    region: int

    @property
    def content_hash(self) -> str:
        return digest(self.poi_id, self.lon, self.lat, self.name, self.category, self.text)


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


@dataclass(frozen=True)
class ImageRecord:
    line: int
    path: str
    kind: str
    lon: float
    lat: float
    heading: float | None
    sha256: str
    size_bytes: int
    width: int
    height: int
    region: int

    @property
    def content_hash(self) -> str:
        return digest(self.path, self.kind, self.lon, self.lat, self.heading, self.sha256)


@dataclass
class Mobility:
    """Trips aggregated to regions: in/out counts and the sparse O/D matrix, as sorted
    unique keys ``origin * n + destination`` (``od_keys``) and their trip counts."""

    inflow: np.ndarray
    outflow: np.ndarray
    od_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    od_counts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rows: int = 0

    @property
    def od(self) -> dict[tuple[int, int], int]:
        """The O/D matrix as {(origin, destination): trips} (made on each call)."""
        n = len(self.inflow)
        return {
            divmod(k, n): c
            for k, c in zip(self.od_keys.tolist(), self.od_counts.tolist(), strict=True)
        }

    def od_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Origins, destinations and trip counts, sorted by origin then destination."""
        n = max(len(self.inflow), 1)
        return self.od_keys // n, self.od_keys % n, self.od_counts


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


@dataclass
class CensusLayerRecord:
    name: str
    fields: list[str]
    features: list[tuple[int, MultiPolygon, dict[str, Any]]]
    content_hash: str


@dataclass
class Bundle:
    """Everything a bundle holds, in EPSG:4326, with points assigned to region indexes."""

    root: Path
    city: CitySpec
    regions: list[RegionRecord]
    pois: PoiTable
    images: list[ImageRecord]
    mobility: Mobility
    indicators: Indicators
    census: list[CensusLayerRecord]
    report: Report
    files: dict[str, bool] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers

def _unstorable(value: Any) -> str | None:
    """Where a JSON value holds text the store cannot hold (in a key or a string), as
    ``"<path> holds <what>"``, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, str):
            bad = bad_char(v)
            if bad:
                return f"{at or 'the value'} holds {bad}"
        elif isinstance(v, dict):
            for k, x in v.items():
                bad = bad_char(str(k))
                if bad:
                    return f"a key in {at or 'the object'} holds {bad}"
                stack.append((f"{at}.{k}" if at else str(k), x))
        elif isinstance(v, list):
            stack.extend((f"{at}[{i}]", x) for i, x in enumerate(v))
    return None


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refused when it leaves the bundle through a symbolic link (to the
    file, or to a folder on its way): the bundle is read as one self-contained folder."""
    path = root / name
    try:
        real, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"cannot be resolved ({exc})", file=name) from exc
    if not real.is_relative_to(base):
        raise BundleError(
            f"is a symbolic link to {str(real)!r}, outside the bundle; the bundle must hold "
            "its files (copy the file into the bundle folder)",
            file=name,
        )
    return path


class _JsonValueError(Exception):
    """A JSON value the bundle refuses (raised from the decoder's hooks)."""


def _json_constant(token: str) -> Any:
    raise _JsonValueError(f"{token} is not valid JSON; write null for a missing number")


def _json_float(token: str) -> float:
    x = float(token)
    if not math.isfinite(x):
        raise _JsonValueError(f"the number {token[:40]} is too large for a double")
    return x


def _load_json(root: Path, name: str) -> Any:
    path = _inside(root, name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read the file ({exc.strerror or exc})", file=name) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BundleError(
            f"not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8",
            file=name,
            line=line,
        ) from exc
    try:
        return json.loads(text, parse_constant=_json_constant, parse_float=_json_float)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", file=name, line=exc.lineno
        ) from exc
    except _JsonValueError as exc:
        raise BundleError(f"invalid JSON: {exc}", file=name) from exc
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise BundleError(f"invalid JSON: a number is too long ({exc})", file=name) from exc
    except RecursionError as exc:
        raise BundleError("invalid JSON: nested too deeply", file=name) from exc


def _check_geojson_crs(doc: dict[str, Any], name: str, crs: CRS) -> None:
    """Old-style GeoJSON may name a CRS; it must agree with city.json's."""
    member = doc.get("crs")
    if member is None:
        return
    props = member.get("properties") if isinstance(member, dict) else None
    declared = props.get("name") if isinstance(props, dict) else None
    if declared is None:
        return  # no named CRS (GeoJSON's default, or a linked one): city.json's applies
    if not isinstance(declared, str):
        raise BundleError(
            f'"crs" names {geo.short(declared)}; a CRS name is a string such as "EPSG:4326"',
            file=name,
        )
    try:
        other = geo.parse_crs(declared)
    except ValueError as exc:
        raise BundleError(str(exc), file=name) from exc
    if not geo.same_crs(other, crs):
        raise BundleError(
            f"declares CRS {declared!r} but city.json says {crs.to_string()!r}; make them agree "
            '(set "crs" in city.json to the CRS the coordinates are in)',
            file=name,
        )


def _features(root: Path, name: str, crs: CRS) -> list[Any]:
    doc = _load_json(root, name)
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise BundleError("expected a GeoJSON FeatureCollection", file=name)
    _check_geojson_crs(doc, name, crs)
    feats = doc.get("features", []) if doc["type"] == "FeatureCollection" else [doc]
    if not isinstance(feats, list):
        raise BundleError('"features" must be a list', file=name)
    return feats


class _NotStreamable(Exception):
    """A GeoJSON file that is not a plain FeatureCollection to read front to back (or that
    is broken): it is read whole instead, which also gives the exact error."""


_JSON_WS = re.compile(r"[ \t\n\r]*")
_READ = 1 << 20


class _JsonStream:
    """JSON values read one at a time from a text file, a piece of the file in memory."""

    def __init__(self, f: Any):
        self.f, self.buf, self.pos = f, "", 0
        self.decoder = json.JSONDecoder(parse_constant=_json_constant, parse_float=_json_float)

    def _fill(self) -> bool:
        """Read more of the file (as much again as is held, so that a long value costs
        linear time); False at the end of the file."""
        chunk = self.f.read(max(_READ, len(self.buf) - self.pos))
        if not chunk:
            return False
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.pos = _JSON_WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def take(self, chars: str) -> str:
        """The next character, which must be one of ``chars``."""
        c = self.peek()
        if not c or c not in chars:
            raise _NotStreamable
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                v, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._fill():
                    continue  # cut off by the end of the piece
                raise
            if end >= len(self.buf) and self._fill():
                continue  # a number may go on in the next piece
            self.pos = end
            return v


def _stream_features(root: Path, name: str, crs: CRS) -> Iterator[Any]:
    """The features of a GeoJSON FeatureCollection, one at a time, without holding the
    whole document; raises :class:`_NotStreamable` for anything but a well-formed
    ``{..., "type": "FeatureCollection", ..., "features": [...], ...}`` whose "type" (and
    "crs") come before its features."""
    try:
        f = _inside(root, name).open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise _NotStreamable from exc
    with f:
        s = _JsonStream(f)
        try:
            yield from _stream_collection(s, name, crs)
        except (ValueError, RecursionError, _JsonValueError) as exc:
            raise _NotStreamable from exc


def _stream_collection(s: _JsonStream, name: str, crs: CRS) -> Iterator[Any]:
    s.take("{")
    head: dict[str, Any] = {}
    done = False
    while True:
        key = s.value()
        if not isinstance(key, str) or (done and key in ("type", "crs", "features")):
            raise _NotStreamable
        s.take(":")
        if key == "features":
            if head.get("type") != "FeatureCollection" or s.peek() != "[":
                raise _NotStreamable
            _check_geojson_crs(head, name, crs)
            s.take("[")
            if s.peek() == "]":
                s.take("]")
            else:
                while True:
                    yield s.value()
                    if s.take(",]") == "]":
                        break
            done = True
        else:
            head[key] = s.value()
        if s.take(",}") == "}":
            break
    if not done or s.peek():
        raise _NotStreamable


def _check_lonlat(g: Any, name: str, crs: CRS, raw: Any, line: int | None = None) -> None:
    """Fatal when a reprojected geometry is not on the globe: the bundle's CRS is wrong."""
    minx, miny, maxx, maxy = g.bounds
    if not geo.lonlat_ok(np.array([minx, maxx]), np.array([miny, maxy])).all():
        x, y = raw.bounds[:2]
        raise BundleError(
            f"coordinates such as ({x:.6g}, {y:.6g}) are not longitude/latitude once read as "
            f'{crs.to_string()}; the CRS is wrong — set "crs" in city.json to the CRS of the '
            "data",
            file=name,
            line=line,
        )


class _CsvReader:
    """One CSV with a header row. The header is checked when the reader is made (missing
    required columns are fatal); iterating yields (line, row) for each well-formed row."""

    def __init__(self, root: Path, name: str, required: list[str], report: Report):
        self.name, self.report = name, report
        self.path = _inside(root, name)
        with self._open() as f:
            header = self._decode(lambda: next(csv.reader(f), None), 1)
        if header is None:
            raise BundleError("file is empty; it needs a header row", file=name, line=1)
        self.columns = [h.strip() for h in header]
        for c in self.columns:
            if "\x00" in c:
                raise BundleError("a column name holds a NUL character", file=name, line=1)
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise BundleError(
                f"missing required column(s) {', '.join(missing)}; the header is "
                f"{geo.short(','.join(self.columns), 200)}",
                file=name,
                line=1,
            )
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dupes:
            raise BundleError(
                f"duplicate column(s) {geo.short(', '.join(dupes), 200)} in the header",
                file=name,
                line=1,
            )

    def _open(self) -> Any:
        try:
            return self.path.open(encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise BundleError(
                f"cannot read the file ({exc.strerror or exc})", file=self.name
            ) from exc

    def _decode(self, read: Any, line: int) -> Any:
        try:
            return read()
        except UnicodeDecodeError as exc:
            # The text layer decodes in blocks, so find the bad byte's line in the raw file.
            data = self.path.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as raw:
                line = data[: raw.start].count(b"\n") + 1
            raise BundleError(
                f"not valid UTF-8 ({exc.reason}); save the file as UTF-8", file=self.name, line=line
            ) from exc
        except csv.Error as exc:
            raise BundleError(f"unreadable CSV ({exc})", file=self.name, line=line) from exc

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        n = len(self.columns)
        with self._open() as f:
            reader = csv.reader(f)
            next(reader)
            while True:
                line = reader.line_num + 1  # where the record starts (it may span lines)
                row = self._decode(lambda: next(reader, None), line)
                if row is None:
                    return
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != n:
                    self.report.skip(
                        self.name,
                        line,
                        f"{len(row)} fields, the header has {n}",
                        kind="wrong number of fields",
                    )
                    continue
                yield line, dict(zip(self.columns, row, strict=True))


def _float(value: str, what: str) -> float:
    """A finite number from a CSV cell (plain decimal notation; raises ValueError)."""
    return geo.number(value, what)


def _text_problem(row: dict[str, str], limits: dict[str, int | None]) -> str | None:
    """Why some of a row's text fields cannot be stored (a NUL, too long), or None."""
    for col, limit in limits.items():
        value = row.get(col, "")
        if "\x00" in value:
            return f"{col} holds a NUL character"
        if limit is not None and len(value.strip()) > limit:
            return f"{col} is longer than {limit} characters"
    return None


class _PointBatch:
    """Collects parsed x/y points of one file, then reprojects, checks and locates them."""

    def __init__(self, name: str, crs: CRS, reprojector: geo.Reprojector):
        self.name, self.crs, self.reprojector = name, crs, reprojector
        self.lines: list[int] = []
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.off_globe = 0
        self.seen = 0

    def add(self, line: int, x: float, y: float) -> None:
        self.lines.append(line)
        self.xs.append(x)
        self.ys.append(y)

    def resolve(
        self, locator: geo.RegionLocator, report: Report, what: str = "point"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns lon, lat and region index (-1 = skipped and reported) per added point."""
        xs, ys = np.asarray(self.xs, dtype=float), np.asarray(self.ys, dtype=float)
        lon, lat = self.reprojector.points(xs, ys)
        ok = geo.lonlat_ok(lon, lat)
        region = locator.locate(lon, lat)
        region[~ok] = -1
        self.seen += len(self.lines)
        self.off_globe += int((~ok).sum())
        for i in np.flatnonzero(region < 0):
            line = self.lines[i]
            if not ok[i]:
                report.skip(
                    self.name,
                    line,
                    f"{what} ({xs[i]:.6g}, {ys[i]:.6g}) is not a valid "
                    f"position in {self.crs.to_string()}",
                    kind=f"{what} off the globe",
                )
            else:
                report.skip(
                    self.name,
                    line,
                    f"{what} ({lon[i]:.6f}, {lat[i]:.6f}) falls in no region",
                    kind=f"{what} in no region",
                )
        self.lines, self.xs, self.ys = [], [], []
        return lon, lat, region

    def check_crs(self) -> None:
        if self.seen and self.off_globe / self.seen > _WRONG_CRS_SHARE:
            raise BundleError(
                f"{self.off_globe} of {self.seen} coordinates are not valid longitude/latitude "
                f"once "
                f'read as {self.crs.to_string()}; the CRS is wrong — set "crs" in city.json',
                file=self.name,
            )


# ---------------------------------------------------------------------------- the files


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that says False, not raises, for a name the OS refuses (too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_city(root: Path) -> CitySpec:
    if not _is_file(root / CITY):
        raise BundleNotFoundError(f"required file {CITY} is missing from {root}", file=CITY)
    doc = _load_json(root, CITY)
    if not isinstance(doc, dict):
        raise BundleError('must be a JSON object like {"name": "..."}', file=CITY)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BundleError('"name" is required and must be a non-empty string', file=CITY)
    if len(name.strip()) > MAX_NAME:
        raise BundleError(f'"name" is longer than {MAX_NAME} characters', file=CITY)
    crs_name = doc.get("crs", "EPSG:4326")
    if not isinstance(crs_name, str):
        raise BundleError(
            f'"crs" must be a string like "EPSG:4326", not {geo.short(crs_name)}', file=CITY
        )
    try:
        crs = geo.horizontal_crs(crs_name)
    except ValueError as exc:
        raise BundleError(f'"crs": {exc}', file=CITY) from exc
    if len(crs_name) > MAX_CRS_NAME:
        code = crs.to_authority(min_confidence=100)
        if code is None:
            raise BundleError(
                f'"crs" is longer than {MAX_CRS_NAME} characters and has no EPSG code; name '
                'the CRS by its code, such as "EPSG:32632"',
                file=CITY,
            )
        crs_name = ":".join(code)
    res = doc.get("h3_resolution")
    if res is not None and (
        isinstance(res, bool) or not isinstance(res, int) or not 0 <= res <= 15
    ):
        raise BundleError(
            f'"h3_resolution" must be an integer from 0 to 15, not {geo.short(res)}', file=CITY
        )
    bad = _unstorable(doc)
    if bad:
        raise BundleError(f"{bad}, which the store cannot hold", file=CITY)
    meta = {k: v for k, v in doc.items() if k not in ("name", "crs", "h3_resolution")}
    return CitySpec(name=name.strip(), crs=crs_name, h3_resolution=res, meta=meta)


def read_regions(root: Path, city: CitySpec, report: Report) -> tuple[list[RegionRecord], bool]:
    """Regions from regions.geojson, or H3 cells tiling boundary.geojson.

    Returns:
        (regions, whether they are H3 cells).
    """
    crs = geo.parse_crs(city.crs)
    rp = geo.Reprojector(crs)
    if _is_file(root / REGIONS):
        return _read_region_polygons(root, crs, rp, report), False
    if not _is_file(root / BOUNDARY):
        raise BundleNotFoundError(
            f"the bundle needs {REGIONS} or, to tile it into H3 cells, {BOUNDARY}; "
            f"neither is in {root}",
            file=REGIONS,
        )
    feats = _features(root, BOUNDARY, crs)
    parts = []
    for no, feat in enumerate(feats, start=1):
        gj = feat.get("geometry") if isinstance(feat, dict) else None
        if not isinstance(gj, dict) or gj.get("type") not in ("Polygon", "MultiPolygon"):
            raise BundleError(
                "the boundary must be a Polygon or MultiPolygon", file=BOUNDARY, line=no
            )
        try:
            g = geo.geojson_geometry(gj)
        except ValueError as exc:
            raise BundleError(f"the boundary: {exc}", file=BOUNDARY, line=no) from exc
        if g.is_empty:
            raise BundleError("the boundary is an empty polygon", file=BOUNDARY, line=no)
        raw, g = g, rp.geometry(g)
        _check_lonlat(g, BOUNDARY, crs, raw, no)
        g, why = _fix(g, BOUNDARY, no)
        if why:
            report.fix(BOUNDARY, no, f"invalid boundary ({why}) repaired with make_valid")
        parts.extend(g.geoms)
    if not parts:
        raise BundleError("has no polygon", file=BOUNDARY)
    res = city.h3_resolution
    if res is None:
        res = DEFAULT_H3_RESOLUTION
        report.note(CITY, None, f"no h3_resolution given; tiling the boundary at resolution {res}")
    try:  # features may overlap: one shape, each cell once
        boundary = (
            geo.polygonal(shapely.union_all(parts)) if len(parts) > 1 else MultiPolygon(parts)
        )
    except shapely.errors.GEOSException as exc:
        raise BundleError(f"cannot merge the boundary's polygons ({exc})", file=BOUNDARY) from exc
    # H3 sizes its work by the boundary's lon/lat box: estimate the cells from the larger of
    # the box's and the shape's area, so that neither a huge box nor a huge shape gets through
    area = max(geo.area_km2(boundary), geo.box_area_km2(boundary.bounds))
    estimate = area / h3.average_hexagon_area(res, unit="km^2")
    if estimate > MAX_H3_CELLS:
        raise BundleError(
            f"tiling the boundary at H3 resolution {res} would make about {estimate:,.0f} "
            f"regions (at most {MAX_H3_CELLS:,}); use a coarser h3_resolution in city.json",
            file=BOUNDARY,
        )
    try:
        cells = geo.h3_cells(boundary, res)
    except Exception as exc:  # h3's errors for shapes it cannot fill
        raise BundleError(f"cannot tile the boundary into H3 cells ({exc})", file=BOUNDARY) from exc
    if not cells:
        raise BundleError(
            f"no H3 cell of resolution {res} has its centre inside the boundary; "
            "use a finer h3_resolution in city.json",
            file=BOUNDARY,
        )
    regions = []
    for c in cells:
        try:
            regions.append(RegionRecord(c, geo.cell_shape(c).wkb, c))
        except ValueError as exc:
            raise BundleError(f"{exc}; leave the pole out of the boundary", file=BOUNDARY) from exc
    return regions, True


def _fix(g: Any, name: str, line: int) -> tuple[MultiPolygon, str | None]:
    """``geo.fix_polygon`` of a feature; GEOS failing on a degenerate shape is a BundleError."""
    try:
        return geo.fix_polygon(g)
    except shapely.errors.GEOSException as exc:
        raise BundleError(f"cannot repair the polygon ({exc})", file=name, line=line) from exc


def _read_region_polygons(
    root: Path, crs: CRS, rp: geo.Reprojector, report: Report
) -> list[RegionRecord]:
    """Streams regions.geojson feature by feature: the parsed document of a million regions
    would take GiBs. A file that cannot be streamed (an odd layout, broken JSON) is read
    whole, which gives the same regions or the same error."""
    try:
        found = Report()
        regions = _region_polygons(_stream_features(root, REGIONS, crs), crs, rp, found)
    except _NotStreamable:
        found = Report()
        regions = _region_polygons(iter(_features(root, REGIONS, crs)), crs, rp, found)
    report.counts.update(found.counts)
    report.listed.extend(found.listed[: max(MAX_LISTED - len(report.listed), 0)])
    return regions


def _region_polygons(
    feats: Iterator[Any], crs: CRS, rp: geo.Reprojector, report: Report
) -> list[RegionRecord]:
    regions: list[RegionRecord] = []
    geoms: list[MultiPolygon] = []
    first_seen: dict[str, int] = {}
    for no, feat in enumerate(feats, start=1):
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise BundleError("is not a GeoJSON Feature", file=REGIONS, line=no)
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise BundleError(
                f'feature {no} has "properties" {geo.short(props)}; it must be an object '
                'holding "region_id"',
                file=REGIONS,
                line=no,
            )
        rid = props.get("region_id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise BundleError(
                f'feature {no} has no usable "region_id" property (got {geo.short(rid)}); '
                "every region needs a unique string id",
                file=REGIONS,
                line=no,
            )
        if isinstance(rid, int):
            report.fix(
                REGIONS,
                no,
                f"region_id {rid} is a number; stored as the string {str(rid)!r}",
                kind="numeric region_id",
            )
        rid = str(rid).strip()
        bad_text = bad_char(rid)
        if bad_text:
            raise BundleError(
                f"region_id {geo.short(rid)} holds {bad_text}, which the store cannot hold",
                file=REGIONS,
                line=no,
            )
        if len(rid) > MAX_REGION_ID:
            raise BundleError(
                f"region_id {rid[:20]!r}... is longer than {MAX_REGION_ID} characters",
                file=REGIONS,
                line=no,
            )
        if rid in first_seen:
            raise BundleError(
                f"region_id {rid!r} is not unique (also feature {first_seen[rid]})",
                file=REGIONS,
                line=no,
            )
        first_seen[rid] = no
        gj = feat.get("geometry")
        if not isinstance(gj, dict) or gj.get("type") not in ("Polygon", "MultiPolygon"):
            kind = gj.get("type") if isinstance(gj, dict) else "missing"
            raise BundleError(
                f"region {rid!r} has geometry {kind if isinstance(kind, str) else geo.short(kind)}"
                "; regions must be Polygon or MultiPolygon",
                file=REGIONS,
                line=no,
            )
        try:
            g = geo.geojson_geometry(gj)
        except ValueError as exc:
            raise BundleError(f"region {rid!r}: {exc}", file=REGIONS, line=no) from exc
        if g.is_empty:
            raise BundleError(f"region {rid!r} has an empty geometry", file=REGIONS, line=no)
        raw, g = g, rp.geometry(g)
        _check_lonlat(g, REGIONS, crs, raw, no)
        fixed, why = _fix(g, REGIONS, no)
        if why:
            if fixed.is_empty:
                raise BundleError(
                    f"region {rid!r} is invalid ({why}) and has no area left after make_valid",
                    file=REGIONS,
                    line=no,
                )
            report.fix(
                REGIONS,
                no,
                f"region {rid!r} was invalid ({why}); repaired with make_valid",
                kind="invalid polygon repaired",
            )
        regions.append(RegionRecord(rid, fixed.wkb, None))
        geoms.append(fixed)
    if not regions:
        raise BundleError("holds no region", file=REGIONS)
    try:
        bad = geo.overlaps(geoms)
    except shapely.errors.GEOSException as exc:
        raise BundleError(f"cannot compare the regions' shapes ({exc})", file=REGIONS) from exc
    if bad:
        i, j, frac = bad[0]
        more = f" ({len(bad) - 1} more pairs)" if len(bad) > 1 else ""
        raise BundleError(
            f"regions {regions[i].region_id!r} (feature {i + 1}) and {regions[j].region_id!r} "
            f"(feature {j + 1}) overlap by {frac:.0%} of the smaller one{more}; regions must not "
            "overlap by more than a sliver",
            file=REGIONS,
            line=j + 1,
        )
    return regions


_id_hash = hash  # str -> 64-bit int (a test swaps in one that collides)


class _SeenIds:
    """The first line of each poi_id accepted so far, for finding duplicates in bounded
    memory (3M ids: ~95 MB, not the ~370 MB of a dict). The ids accepted since the last
    :meth:`freeze` are in a dict; older ones cost 24 bytes plus their UTF-8 each: their
    ``_id_hash`` in one sorted array (a match is only a candidate, confirmed by comparing the
    id itself), their lines, and the ids NUL-joined in one blob per chunk (no accepted poi_id
    holds a NUL)."""

    def __init__(self) -> None:
        self._recent: dict[str, int] = {}
        self._hash = np.empty(0, np.int64)  # _id_hash of every frozen id, sorted
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
        h = _id_hash(poi_id)
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
        hashes = np.fromiter((_id_hash(p) for p in self._recent), np.int64, n)
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
    root: Path, crs: CRS, locator: geo.RegionLocator, report: Report, show: bool | None
) -> PoiTable:
    if not _is_file(root / POIS):
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    reader = _CsvReader(root, POIS, ["poi_id", "lon", "lat", "name", "category"], report)
    limits = {"poi_id": MAX_NAME, "category": MAX_NAME, "name": None, "text": None}
    batch = _PointBatch(POIS, crs, geo.Reprojector(crs))
    rows: list[tuple[int, str, str, str, str]] = []
    seen = _SeenIds()  # poi_id -> first line: the one thing here that grows with the file
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
        problem = _text_problem(row, limits)
        if problem:
            report.skip(POIS, line, f"{problem}; the store cannot hold it", kind="unstorable text")
            continue
        try:
            x, y = _float(row["lon"], "lon"), _float(row["lat"], "lat")
        except ValueError as exc:
            report.skip(POIS, line, str(exc), kind="unparsable coordinate")
            continue
        seen.add(poi_id, line)
        batch.add(line, x, y)
        rows.append((line, poi_id, row["name"], category, row.get("text", "")))
        if len(rows) >= _CHUNK:
            flush()
    flush()
    batch.check_crs()
    return out


def read_trips(
    root: Path,
    crs: CRS,
    locator: geo.RegionLocator,
    n_regions: int,
    report: Report,
    show: bool | None,
) -> Mobility:
    mob = Mobility(np.zeros(n_regions, np.int64), np.zeros(n_regions, np.int64))
    if not _is_file(root / TRIPS):
        return mob
    reader = _CsvReader(root, TRIPS, ["origin_lon", "origin_lat", "dest_lon", "dest_lat"], report)
    rp = geo.Reprojector(crs)
    origins, dests = _PointBatch(TRIPS, crs, rp), _PointBatch(TRIPS, crs, rp)

    def flush() -> None:
        _, _, o = origins.resolve(locator, report, "trip origin")
        _, _, d = dests.resolve(locator, report, "trip destination")
        np.add.at(mob.outflow, o[o >= 0], 1)
        np.add.at(mob.inflow, d[d >= 0], 1)
        both = (o >= 0) & (d >= 0)
        keys, counts = np.unique(o[both] * n_regions + d[both], return_counts=True)
        keys, inverse = np.unique(np.concatenate([mob.od_keys, keys]), return_inverse=True)
        total = np.zeros(len(keys), np.int64)
        np.add.at(total, inverse, np.concatenate([mob.od_counts, counts]))
        mob.od_keys, mob.od_counts = keys, total

    for line, row in progress(reader, desc="trips", enabled=show, unit="row"):
        try:
            ox, oy = (
                _float(row["origin_lon"], "origin_lon"),
                _float(row["origin_lat"], "origin_lat"),
            )
            dx, dy = _float(row["dest_lon"], "dest_lon"), _float(row["dest_lat"], "dest_lat")
        except ValueError as exc:
            report.skip(TRIPS, line, str(exc), kind="unparsable coordinate")
            continue
        origins.add(line, ox, oy)
        dests.add(line, dx, dy)
        mob.rows += 1
        if len(origins.lines) >= _CHUNK:
            flush()
    flush()
    origins.check_crs()
    dests.check_crs()
    return mob


_LEAVES = "image path leaves the bundle"


class _PathError(ValueError):
    """An image path that cannot be used; ``kind`` is the report's reason group."""

    def __init__(self, message: str, kind: str = "bad image path"):
        super().__init__(message)
        self.kind = kind


def _image_path(value: str, root: Path) -> str:
    """Normalise a bundle-relative image path; raises ValueError for one that leaves the bundle."""
    raw = value.strip().replace("\\", "/")
    if not raw:
        raise _PathError("empty path")
    if "\x00" in raw:
        raise _PathError(f"path {geo.short(value)} holds a NUL character")
    p = PurePosixPath(raw)
    if p.is_absolute() or ".." in p.parts:
        raise _PathError(
            f"path {geo.short(value)} must be relative to the bundle and stay inside it", _LEAVES
        )
    return p.as_posix()


def _image_file(root: Path, rel: str) -> Path:
    """The file behind a normalised image path; raises _PathError when it is missing, not a
    regular file, or a symbolic link (of the file or of a folder on its way) that leaves the
    bundle, which is refused like a ``..`` path."""
    path = root / rel
    try:
        real = path.resolve()
        inside = real.is_relative_to(root.resolve())
        exists = path.exists()
        regular = path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # too long a name, a symlink loop
        raise _PathError(f"image file {geo.short(rel)} cannot be opened ({exc})") from exc
    if not inside:
        raise _PathError(
            f"path {geo.short(rel)} must be relative to the bundle and stay inside it "
            f"(it is a symbolic link to {str(real)!r}, outside the bundle)",
            _LEAVES,
        )
    if not exists:
        raise _PathError(f"image file {rel!r} does not exist", "missing image file")
    if not regular:
        raise _PathError(f"image file {rel!r} is not a regular file", "missing image file")
    return path


def file_facts(path: Path) -> tuple[str, int, int, int]:
    """sha256, size and pixel size of an image file.

    Raises:
        ValueError: the file cannot be read, or Pillow cannot decode it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read image {path.name!r} ({exc.strerror or exc})") from exc
    try:
        with PILImage.open(path) as img:
            img.load()
            width, height = img.size
    except Exception as exc:  # Pillow raises many types for broken files
        raise ValueError(
            f"cannot decode image {path.name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    return hashlib.sha256(data).hexdigest(), len(data), width, height


def read_images(
    root: Path, crs: CRS, locator: geo.RegionLocator, report: Report, show: bool | None
) -> list[ImageRecord]:
    if not _is_file(root / IMAGES):
        return []
    reader = _CsvReader(root, IMAGES, ["path", "kind", "lon", "lat"], report)
    batch = _PointBatch(IMAGES, crs, geo.Reprojector(crs))
    parsed: list[tuple[int, str, str, float | None]] = []
    seen: dict[str, int] = {}
    for line, row in reader:
        kind = row["kind"].strip().lower()
        if kind not in ("remote", "street"):
            report.skip(
                IMAGES,
                line,
                f"kind {geo.short(row['kind'])} is neither 'remote' nor 'street'",
                kind="unknown image kind",
            )
            continue
        try:
            rel = _image_path(row["path"], root)
        except _PathError as exc:
            report.skip(IMAGES, line, str(exc), kind=exc.kind)
            continue
        try:
            x, y = _float(row["lon"], "lon"), _float(row["lat"], "lat")
            h = row.get("heading", "").strip()
            heading = _float(h, "heading") % 360.0 if h else None
        except ValueError as exc:
            report.skip(IMAGES, line, str(exc), kind="unparsable row")
            continue
        if rel in seen:
            report.skip(
                IMAGES,
                line,
                f"path {rel!r} is listed twice (first on line {seen[rel]})",
                kind="duplicate image path",
            )
            continue
        seen[rel] = line
        batch.add(line, x, y)
        parsed.append((line, rel, kind, heading))
    lon, lat, region = batch.resolve(locator, report, "image")
    batch.check_crs()
    out: list[ImageRecord] = []
    todo = [(i, p) for i, p in enumerate(parsed) if region[i] >= 0]
    for i, (line, rel, kind, heading) in progress(todo, desc="images", enabled=show, unit="img"):
        try:
            path = _image_file(root, rel)
        except _PathError as exc:
            report.skip(IMAGES, line, str(exc), kind=exc.kind)
            continue
        try:
            sha, size, width, height = file_facts(path)
        except ValueError as exc:
            report.skip(IMAGES, line, str(exc), kind="undecodable image")
            continue
        out.append(
            ImageRecord(
                line,
                rel,
                kind,
                float(lon[i]),
                float(lat[i]),
                heading,
                sha,
                size,
                width,
                height,
                int(region[i]),
            )
        )
    return out


def read_indicators(root: Path, index: dict[str, int], report: Report) -> Indicators:
    if not _is_file(root / INDICATORS):
        return Indicators([], np.empty((len(index), 0)))
    reader = _CsvReader(root, INDICATORS, ["region_id"], report)
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
                values[i, k] = _float(cell, f"indicator {n!r} value")
            except ValueError as exc:
                report.skip(INDICATORS, line, str(exc), kind="non-numeric indicator value")
    return Indicators(names, values)


def _numeric(v: Any) -> bool:
    """A census value that is a number a double can hold (not a bool, not 1e400 as an int)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def read_census(root: Path, crs: CRS, report: Report) -> list[CensusLayerRecord]:
    folder = root / CENSUS_DIR
    if not folder.is_dir():
        return []
    rp = geo.Reprojector(crs)
    layers: list[CensusLayerRecord] = []
    for path in sorted(folder.glob("*.geojson")):
        name = f"{CENSUS_DIR}/{path.name}"
        bad = bad_char(path.stem)  # a file name that is not UTF-8 decodes to surrogates
        if bad or len(path.stem) > MAX_NAME:
            what = f"holds {bad}" if bad else f"is longer than {MAX_NAME} characters"
            report.skip(name, None, f"the layer name {what}; not stored", kind="bad layer name")
            continue
        if not _is_file(_inside(root, name)):
            report.skip(name, None, "is not a file; not read", kind="not a file")
            continue
        feats = _features(root, name, crs)
        rows: list[tuple[int, MultiPolygon, dict[str, Any]]] = []
        for no, feat in enumerate(feats, start=1):
            gj = feat.get("geometry") if isinstance(feat, dict) else None
            if not isinstance(gj, dict) or gj.get("type") not in ("Polygon", "MultiPolygon"):
                report.skip(
                    name,
                    no,
                    "census features must be Polygon or MultiPolygon",
                    kind="non-polygon feature",
                )
                continue
            try:
                raw = geo.geojson_geometry(gj)
            except ValueError as exc:
                report.skip(name, no, str(exc), kind="malformed geometry")
                continue
            if raw.is_empty:
                report.skip(name, no, "empty polygon", kind="empty polygon")
                continue
            props = feat.get("properties") or {}
            bad = _unstorable(props)
            if bad:
                report.skip(
                    name, no, f"properties: {bad}, which the store cannot hold", kind="bad text"
                )
                continue
            g = rp.geometry(raw)
            _check_lonlat(g, name, crs, raw, no)
            fixed, why = _fix(g, name, no)
            if why:
                report.fix(
                    name,
                    no,
                    f"invalid polygon ({why}) repaired with make_valid",
                    kind="invalid polygon repaired",
                )
            if fixed.is_empty:
                report.skip(name, no, "empty polygon", kind="empty polygon")
                continue
            rows.append((no, fixed, props if isinstance(props, dict) else {}))
        if not rows:
            report.skip(name, None, "layer has no usable polygon; not stored", kind="empty layer")
            continue
        fields = sorted(
            k
            for k in {k for _, _, p in rows for k in p}
            if all(p.get(k) is None or _numeric(p.get(k)) for _, _, p in rows)
            and any(p.get(k) is not None for _, _, p in rows)
        )
        layers.append(
            CensusLayerRecord(path.stem, fields, rows, digest(crs.to_string(), path.read_bytes()))
        )
    return layers


def read_bundle(path: str | Path, *, show_progress: bool | None = None) -> Bundle:
    """Read and validate a whole city bundle.

    Args:
        path: the bundle directory.
        show_progress: progress bars on stderr (``None``: when stderr is a terminal).

    Raises:
        BundleNotFoundError: the directory or a required file is missing.
        BundleError: a fatal defect; the message names the file (and line or feature).
    """
    try:
        root = Path(path).expanduser().resolve()
        found = root.is_dir()
    except (OSError, RuntimeError, ValueError):  # a NUL in the path, a symlink loop
        found = False
    if not found:
        raise BundleNotFoundError(f"bundle directory {str(path)!r} does not exist")
    report = Report()
    city = read_city(root)
    crs = geo.parse_crs(city.crs)
    if not _is_file(root / POIS):  # check every required file before the slow work
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    regions, is_h3 = read_regions(root, city, report)
    if is_h3:
        locator = geo.RegionLocator([], [r.region_id for r in regions])
    else:
        locator = geo.RegionLocator(list(shapely.from_wkb([r.wkb for r in regions])))
    pois = read_pois(root, crs, locator, report, show_progress)
    mobility = read_trips(root, crs, locator, len(regions), report, show_progress)
    images = read_images(root, crs, locator, report, show_progress)
    indicators = read_indicators(root, {r.region_id: i for i, r in enumerate(regions)}, report)
    census = read_census(root, crs, report)
    files = {
        f: (root / f).exists() for f in (REGIONS, BOUNDARY, TRIPS, IMAGES, INDICATORS, CENSUS_DIR)
    }
    return Bundle(root, city, regions, pois, images, mobility, indicators, census, report, files)
