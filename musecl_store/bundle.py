"""Reading a city bundle (``docs/city-bundle.md``) into validated, lon/lat records.

Reading touches no database. Fatal defects (a missing required file or column, bad regions,
an unknown or wrong CRS) raise :class:`~musecl_store.errors.BundleError` before anything is
written; row-level defects are skipped and recorded in the :class:`~musecl_store.report.Report`
with file, line and reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image as PILImage
from pyproj import CRS
from shapely.geometry import MultiPolygon

from musecl_store import geo
from musecl_store.errors import BundleError, BundleNotFoundError
from musecl_store.progress import progress
from musecl_store.report import Report

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
_CHUNK = 100_000
_WRONG_CRS_SHARE = 0.5  # more than this share of a file's points off the globe: the CRS is wrong


def digest(*parts: Any) -> str:
    """A short, stable content hash of some values (hex, 32 chars)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass(frozen=True)
class CitySpec:
    name: str
    crs: str
    h3_resolution: int | None
    meta: dict[str, Any]


@dataclass
class RegionRecord:
    region_id: str
    geom: MultiPolygon
    h3_cell: str | None = None


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
    """Trips aggregated to regions: in/out counts and the sparse O/D matrix."""

    inflow: np.ndarray
    outflow: np.ndarray
    od: dict[tuple[int, int], int]
    rows: int = 0


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
    pois: list[PoiRecord]
    images: list[ImageRecord]
    mobility: Mobility
    indicators: dict[int, dict[str, float]]
    census: list[CensusLayerRecord]
    report: Report
    files: dict[str, bool] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


def _load_json(root: Path, name: str) -> Any:
    path = root / name
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise BundleError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", file=name) from exc
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", file=name, line=exc.lineno
        ) from exc


def _check_geojson_crs(doc: dict[str, Any], name: str, crs: CRS) -> None:
    """Old-style GeoJSON may name a CRS; it must agree with city.json's."""
    declared = (
        (doc.get("crs") or {}).get("properties", {}).get("name")
        if isinstance(doc.get("crs"), dict)
        else None
    )
    if not declared:
        return
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


def _features(root: Path, name: str, crs: CRS) -> list[dict[str, Any]]:
    doc = _load_json(root, name)
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise BundleError("expected a GeoJSON FeatureCollection", file=name)
    _check_geojson_crs(doc, name, crs)
    feats = doc.get("features", []) if doc["type"] == "FeatureCollection" else [doc]
    if not isinstance(feats, list):
        raise BundleError('"features" must be a list', file=name)
    return feats


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
        self.path = root / name
        with self._open() as f:
            header = self._decode(lambda: next(csv.reader(f), None), 1)
        if header is None:
            raise BundleError("file is empty; it needs a header row", file=name, line=1)
        self.columns = [h.strip() for h in header]
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise BundleError(
                f"missing required column(s) {', '.join(missing)}; the header is "
                f"{','.join(self.columns)}",
                file=name,
                line=1,
            )
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dupes:
            raise BundleError(
                f"duplicate column(s) {', '.join(dupes)} in the header", file=name, line=1
            )

    def _open(self) -> Any:
        return self.path.open(encoding="utf-8-sig", newline="")

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
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} {value!r} is not finite")
    return x


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


def read_city(root: Path) -> CitySpec:
    if not (root / CITY).is_file():
        raise BundleNotFoundError(f"required file {CITY} is missing from {root}", file=CITY)
    doc = _load_json(root, CITY)
    if not isinstance(doc, dict):
        raise BundleError('must be a JSON object like {"name": "..."}', file=CITY)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BundleError('"name" is required and must be a non-empty string', file=CITY)
    crs_name = doc.get("crs", "EPSG:4326")
    if not isinstance(crs_name, str):
        raise BundleError(f'"crs" must be a string like "EPSG:4326", not {crs_name!r}', file=CITY)
    try:
        geo.parse_crs(crs_name)
    except ValueError as exc:
        raise BundleError(f'"crs": {exc}', file=CITY) from exc
    res = doc.get("h3_resolution")
    if res is not None and (
        isinstance(res, bool) or not isinstance(res, int) or not 0 <= res <= 15
    ):
        raise BundleError(
            f'"h3_resolution" must be an integer from 0 to 15, not {res!r}', file=CITY
        )
    meta = {k: v for k, v in doc.items() if k not in ("name", "crs", "h3_resolution")}
    return CitySpec(name=name.strip(), crs=crs_name, h3_resolution=res, meta=meta)


def read_regions(root: Path, city: CitySpec, report: Report) -> tuple[list[RegionRecord], bool]:
    """Regions from regions.geojson, or H3 cells tiling boundary.geojson.

    Returns:
        (regions, whether they are H3 cells).
    """
    crs = geo.parse_crs(city.crs)
    rp = geo.Reprojector(crs)
    if (root / REGIONS).is_file():
        return _read_region_polygons(root, crs, rp, report), False
    if not (root / BOUNDARY).is_file():
        raise BundleNotFoundError(
            f"the bundle needs {REGIONS} or, to tile it into H3 cells, {BOUNDARY}; "
            f"neither is in {root}",
            file=REGIONS,
        )
    feats = _features(root, BOUNDARY, crs)
    parts = []
    for no, feat in enumerate(feats, start=1):
        g = geo.geojson_geometry((feat or {}).get("geometry") or {}) if feat else None
        if g is None or g.geom_type not in ("Polygon", "MultiPolygon"):
            raise BundleError(
                "the boundary must be a Polygon or MultiPolygon", file=BOUNDARY, line=no
            )
        raw, g = g, rp.geometry(g)
        _check_lonlat(g, BOUNDARY, crs, raw, no)
        g, why = geo.fix_polygon(g)
        if why:
            report.fix(BOUNDARY, no, f"invalid boundary ({why}) repaired with make_valid")
        parts.extend(g.geoms)
    if not parts:
        raise BundleError("has no polygon", file=BOUNDARY)
    res = city.h3_resolution
    if res is None:
        res = DEFAULT_H3_RESOLUTION
        report.note(CITY, None, f"no h3_resolution given; tiling the boundary at resolution {res}")
    cells = geo.h3_cells(MultiPolygon(parts), res)
    if not cells:
        raise BundleError(
            f"no H3 cell of resolution {res} has its centre inside the boundary; "
            "use a finer h3_resolution in city.json",
            file=BOUNDARY,
        )
    return [RegionRecord(c, MultiPolygon([geo.cell_polygon(c)]), c) for c in cells], True


def _read_region_polygons(
    root: Path, crs: CRS, rp: geo.Reprojector, report: Report
) -> list[RegionRecord]:
    feats = _features(root, REGIONS, crs)
    regions: list[RegionRecord] = []
    first_seen: dict[str, int] = {}
    for no, feat in enumerate(feats, start=1):
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise BundleError("is not a GeoJSON Feature", file=REGIONS, line=no)
        props = feat.get("properties") or {}
        rid = props.get("region_id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise BundleError(
                f'feature {no} has no usable "region_id" property (got {rid!r}); '
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
                f"region {rid!r} has geometry {kind}; regions must be Polygon or MultiPolygon",
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
        fixed, why = geo.fix_polygon(g)
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
        regions.append(RegionRecord(rid, fixed, None))
    if not regions:
        raise BundleError("holds no region", file=REGIONS)
    bad = geo.overlaps([r.geom for r in regions])
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


def read_pois(
    root: Path, crs: CRS, locator: geo.RegionLocator, report: Report, show: bool | None
) -> list[PoiRecord]:
    if not (root / POIS).is_file():
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    reader = _CsvReader(root, POIS, ["poi_id", "lon", "lat", "name", "category"], report)
    batch = _PointBatch(POIS, crs, geo.Reprojector(crs))
    rows: list[tuple[int, str, str, str, str]] = []
    seen: dict[str, int] = {}
    for line, row in progress(reader, desc="pois", enabled=show, unit="row"):
        poi_id, category = row["poi_id"].strip(), row["category"].strip()
        if not poi_id:
            report.skip(POIS, line, "empty poi_id")
            continue
        if poi_id in seen:
            report.skip(
                POIS,
                line,
                f"poi_id {poi_id!r} is not unique (first on line {seen[poi_id]})",
                kind="duplicate poi_id",
            )
            continue
        if not category:
            report.skip(POIS, line, "empty category")
            continue
        try:
            x, y = _float(row["lon"], "lon"), _float(row["lat"], "lat")
        except ValueError as exc:
            report.skip(POIS, line, str(exc), kind="unparsable coordinate")
            continue
        seen[poi_id] = line
        batch.add(line, x, y)
        rows.append((line, poi_id, row["name"], category, row.get("text", "")))
    lon, lat, region = batch.resolve(locator, report, "poi")
    batch.check_crs()
    return [
        PoiRecord(line, pid, float(lon[i]), float(lat[i]), name, cat, text, int(region[i]))
        for i, (line, pid, name, cat, text) in enumerate(rows)
        if region[i] >= 0
    ]


def read_trips(
    root: Path,
    crs: CRS,
    locator: geo.RegionLocator,
    n_regions: int,
    report: Report,
    show: bool | None,
) -> Mobility:
    mob = Mobility(np.zeros(n_regions, np.int64), np.zeros(n_regions, np.int64), {})
    if not (root / TRIPS).is_file():
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
        pairs, counts = np.unique(o[both] * n_regions + d[both], return_counts=True)
        for key, c in zip(pairs.tolist(), counts.tolist(), strict=True):
            k = divmod(key, n_regions)
            mob.od[k] = mob.od.get(k, 0) + c

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


def _image_path(value: str, root: Path) -> str:
    """Normalise a bundle-relative image path; raises ValueError for one that leaves the bundle."""
    raw = value.strip().replace("\\", "/")
    if not raw:
        raise ValueError("empty path")
    p = PurePosixPath(raw)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"path {value!r} must be relative to the bundle and stay inside it")
    return p.as_posix()


def file_facts(path: Path) -> tuple[str, int, int, int]:
    """sha256, size and pixel size of an image file.

    Raises:
        ValueError: Pillow cannot decode it.
    """
    data = path.read_bytes()
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
    if not (root / IMAGES).is_file():
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
                f"kind {row['kind']!r} is neither 'remote' nor 'street'",
                kind="unknown image kind",
            )
            continue
        try:
            rel = _image_path(row["path"], root)
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
        path = root / rel
        if not path.is_file():
            report.skip(
                IMAGES, line, f"image file {rel!r} does not exist", kind="missing image file"
            )
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


def read_indicators(
    root: Path, index: dict[str, int], report: Report
) -> dict[int, dict[str, float]]:
    if not (root / INDICATORS).is_file():
        return {}
    reader = _CsvReader(root, INDICATORS, ["region_id"], report)
    names = [c for c in reader.columns if c != "region_id"]
    if not names:
        raise BundleError("has no indicator column besides region_id", file=INDICATORS, line=1)
    if any(not n for n in names):
        raise BundleError("has an indicator column with an empty name", file=INDICATORS, line=1)
    out: dict[int, dict[str, float]] = {}
    seen: dict[str, int] = {}
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
        if rid in seen:
            report.skip(
                INDICATORS,
                line,
                f"region_id {rid!r} appears twice (first on line {seen[rid]})",
                kind="duplicate region_id",
            )
            continue
        seen[rid] = line
        values: dict[str, float] = {}
        for n in names:
            cell = row[n].strip()
            if not cell:
                continue  # blank = unknown
            try:
                values[n] = _float(cell, f"indicator {n!r} value")
            except ValueError as exc:
                report.skip(INDICATORS, line, str(exc), kind="non-numeric indicator value")
        if values:
            out[index[rid]] = values
    return out


def read_census(root: Path, crs: CRS, report: Report) -> list[CensusLayerRecord]:
    folder = root / CENSUS_DIR
    if not folder.is_dir():
        return []
    rp = geo.Reprojector(crs)
    layers: list[CensusLayerRecord] = []
    for path in sorted(folder.glob("*.geojson")):
        name = f"{CENSUS_DIR}/{path.name}"
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
            g = rp.geometry(raw)
            _check_lonlat(g, name, crs, raw, no)
            fixed, why = geo.fix_polygon(g)
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
            props = feat.get("properties") or {}
            rows.append((no, fixed, props if isinstance(props, dict) else {}))
        if not rows:
            report.skip(name, None, "layer has no usable polygon; not stored", kind="empty layer")
            continue
        fields = sorted(
            k
            for k in {k for _, _, p in rows for k in p}
            if all(
                p.get(k) is None
                or (isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool))
                for _, _, p in rows
            )
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
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise BundleNotFoundError(f"bundle directory {str(path)!r} does not exist")
    report = Report()
    city = read_city(root)
    crs = geo.parse_crs(city.crs)
    if not (root / POIS).is_file():  # check every required file before the slow work
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    regions, is_h3 = read_regions(root, city, report)
    locator = geo.RegionLocator(
        [r.geom for r in regions], [r.region_id for r in regions] if is_h3 else None
    )
    pois = read_pois(root, crs, locator, report, show_progress)
    mobility = read_trips(root, crs, locator, len(regions), report, show_progress)
    images = read_images(root, crs, locator, report, show_progress)
    indicators = read_indicators(root, {r.region_id: i for i, r in enumerate(regions)}, report)
    census = read_census(root, crs, report)
    files = {
        f: (root / f).exists() for f in (REGIONS, BOUNDARY, TRIPS, IMAGES, INDICATORS, CENSUS_DIR)
    }
    return Bundle(root, city, regions, pois, images, mobility, indicators, census, report, files)
