"""Geometry helpers: CRS handling, H3 tiling, validity fixes and point-in-region lookup."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h3
import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from musecl_store.errors import MuseclError

WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")

# A plain decimal number in ASCII: what ``float`` reads minus its extras (``1_000``, ``nan``,
# ``inf``, non-ASCII digits such as ``١``), which are typos or hostile input in a coordinate.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class GeoError(MuseclError, ValueError):
    """A coordinate, CRS or geometry given as input that cannot be used (the message says
    which value and why)."""


def number(text: str, what: str) -> float:
    """A finite float from a plain decimal string (surrounding blanks allowed).

    Raises:
        GeoError: naming ``what`` and the value, for anything else (``nan``, ``inf``,
            ``1_000``, ``0x1``, an overflow such as ``1e999``).
    """
    s = text.strip() if isinstance(text, str) else None
    if s is None or not _NUMBER.fullmatch(s):
        raise GeoError(f"{what} {short(text)} is not a number")
    x = float(s)
    if not math.isfinite(x):
        raise GeoError(f"{what} {short(text)} is not finite")
    return x


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value on one line, cut to ``limit`` characters: messages stay one short
    line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_crs(value: str) -> CRS:
    """Parse a CRS name such as ``EPSG:4326``; raises :class:`GeoError` naming the value."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise GeoError(f"unknown CRS {short(value)} (give a name such as 'EPSG:4326')")
    try:
        return CRS.from_user_input(value)
    except (CRSError, TypeError, ValueError) as exc:
        raise GeoError(f"unknown CRS {short(value)} ({' '.join(str(exc).split())[:200]})") from exc


def horizontal_crs(value: str) -> CRS:
    """A CRS that places points on the globe (geographic or projected, 2-D, possibly with a
    vertical part) and can be transformed to lon/lat; raises :class:`GeoError` otherwise."""
    crs = parse_crs(value)
    if not (crs.is_geographic or crs.is_projected):
        raise GeoError(
            f"CRS {short(value)} ({crs.type_name}) is not a geographic or projected CRS; "
            "name the CRS the x/y coordinates are in, such as 'EPSG:4326' or 'EPSG:32632'"
        )
    try:
        _transformer(crs)
    except Exception as exc:  # pyproj.exceptions.ProjError and friends
        raise GeoError(f"CRS {short(value)} cannot be transformed to EPSG:4326 ({exc})") from exc
    return crs


def same_crs(a: CRS, b: CRS) -> bool:
    """True when two CRSs differ at most in axis order (GeoJSON's CRS84 is EPSG:4326 as x/y)."""
    return bool(a.equals(b, ignore_axis_order=True))


@dataclass(frozen=True)
class Reprojector:
    """Moves x/y coordinates of the bundle's CRS to lon/lat (EPSG:4326)."""

    crs: CRS

    @property
    def identity(self) -> bool:
        return same_crs(self.crs, WGS84)

    def points(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return xs, ys
        lon, lat = _transformer(self.crs).transform(xs, ys)
        return np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)

    def geometry(self, geom: BaseGeometry) -> BaseGeometry:
        if self.identity:
            return geom
        t = _transformer(self.crs)
        return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def _transformer(crs: CRS) -> Transformer:
    return Transformer.from_crs(crs, WGS84, always_xy=True)


def lonlat_ok(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Mask of coordinates that are finite and inside the longitude/latitude range."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90)


def coordinates(value: str | Sequence[float], names: str) -> tuple[float, ...]:
    """The numbers ``names`` describes (``"LON,LAT"``, ``"LON,LAT,KM"``,
    ``"MINLON,MINLAT,MAXLON,MAXLAT"``), from a comma-separated string or a sequence: as many
    as named, finite, and the LON and LAT ones on the globe.

    A ``KM`` must be positive.

    Raises:
        GeoError: (a ``ValueError``) naming what is wrong.
    """
    wanted = names.split(",")
    try:
        if isinstance(value, str):
            parts = tuple(number(v, "x") for v in value.split(","))
        elif not isinstance(value, Sequence | np.ndarray) or isinstance(value, bytes):
            parts = ()
        else:
            parts = tuple(_scalar(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        parts = ()
    if len(parts) != len(wanted) or not all(math.isfinite(p) for p in parts):
        raise GeoError(f"expected {names}, got {short(value)}")
    for name, v in zip(wanted, parts, strict=True):
        if name.endswith("LON") and not -180 <= v <= 180:
            raise GeoError(f"longitude {v} is outside -180..180")
        if name.endswith("LAT") and not -90 <= v <= 90:
            raise GeoError(f"latitude {v} is outside -90..90")
        if name == "KM" and not v > 0:
            raise GeoError(f"the distance in km must be positive, not {v}")
    return parts


def _scalar(v: Any) -> float:
    """A real number given as a number or a plain decimal string (not a bool)."""
    if isinstance(v, str):
        return number(v, "x")
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"not a number: {v!r}")
    return float(v)


def polygonal(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal part of ``geom`` as a MultiPolygon (empty when it has none)."""
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom]) if not geom.is_empty else MultiPolygon()
    parts: list[Polygon] = []
    for g in getattr(geom, "geoms", []):
        parts.extend(polygonal(g).geoms)
    return MultiPolygon(parts)


def fix_polygon(geom: BaseGeometry) -> tuple[MultiPolygon, str | None]:
    """Return a valid MultiPolygon and, when a fix was needed, why it was invalid."""
    if geom.is_valid:
        return polygonal(geom), None
    reason = shapely.is_valid_reason(geom)
    return polygonal(shapely.make_valid(geom)), reason


def area_km2(geom: BaseGeometry) -> float:
    """Geodesic area on the WGS84 ellipsoid, in km²."""
    area, _ = _GEOD.geometry_area_perimeter(geom)
    return abs(area) / 1e6


def box_area_km2(bounds: tuple[float, float, float, float]) -> float:
    """Area of a lon/lat box (minx, miny, maxx, maxy) on the authalic sphere, in km²."""
    minx, miny, maxx, maxy = bounds
    r = 6371.0072  # km, the radius of the sphere of the WGS84 ellipsoid's area
    return float(
        r * r * np.radians(maxx - minx) * (np.sin(np.radians(maxy)) - np.sin(np.radians(miny)))
    )


def cell_polygon(cell: str) -> Polygon:
    """An H3 cell's boundary as a lon/lat polygon."""
    return Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)])


def cell_shape(cell: str) -> MultiPolygon:
    """An H3 cell as a valid lon/lat MultiPolygon: a cell that crosses the antimeridian is
    cut there into its east and west parts (``cell_polygon`` would wrap it around the globe).

    Raises:
        GeoError: the cell contains a pole, which no lon/lat polygon of its ring describes.
    """
    pts = [(lng, lat) for lat, lng in h3.cell_to_boundary(cell)]
    lons = [x for x, _ in pts]
    if max(lons) - min(lons) <= 180:
        return polygonal(Polygon(pts))
    unwrapped = [(x + 360.0 if x < 0 else x, y) for x, y in pts]
    ux = [x for x, _ in unwrapped]
    if max(ux) - min(ux) > 180:
        raise GeoError(f"H3 cell {cell} contains a pole; a pole cannot be tiled in lon/lat")
    ring = Polygon(unwrapped)
    west = shapely.intersection(ring, shapely.box(0.0, -90.0, 180.0, 90.0))
    east = shapely.intersection(ring, shapely.box(180.0, -90.0, 360.0, 90.0))
    east = shapely.transform(east, lambda xy: xy - np.array([360.0, 0.0]))
    return polygonal(shapely.union(west, east))


def h3_cells(boundary: BaseGeometry, resolution: int) -> list[str]:
    """The H3 cells at ``resolution`` whose centre lies inside ``boundary``, sorted, each once
    (parts of a MultiPolygon may overlap)."""
    return sorted(set(h3.geo_to_cells(shapely.geometry.mapping(boundary), resolution)))


def overlaps(
    geoms: Sequence[BaseGeometry], tolerance: float = 0.01
) -> list[tuple[int, int, float]]:
    """Pairs of polygons that overlap by more than ``tolerance`` of the smaller one's area.

    Returns (i, j, fraction) with i < j; shared edges and slivers are not overlaps.
    """
    arr = np.asarray(geoms, dtype=object)
    tree = shapely.STRtree(arr)
    left, right = tree.query(arr, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    if left.size == 0:
        return []
    inter = shapely.area(shapely.intersection(arr[left], arr[right]))
    smaller = np.minimum(shapely.area(arr[left]), shapely.area(arr[right]))
    frac = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    bad = frac > tolerance
    return [
        (int(i), int(j), float(f)) for i, j, f in zip(left[bad], right[bad], frac[bad], strict=True)
    ]


class RegionLocator:
    """Finds the region that contains each point.

    H3 regions are looked up by cell id (exact, O(1) per point); other polygons through an
    STR-tree. A point on a shared border goes to the region listed first.
    """

    def __init__(self, geoms: Sequence[BaseGeometry], h3_cells: Sequence[str] | None = None):
        self._cells: dict[str, int] | None = None
        self._resolution = -1
        if h3_cells is not None:
            self._cells = {c: i for i, c in enumerate(h3_cells)}
            self._resolution = h3.get_resolution(h3_cells[0]) if h3_cells else 0
        else:
            self._geoms = np.asarray(geoms, dtype=object)
            self._tree = shapely.STRtree(self._geoms)

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Region index per point, ``-1`` where none contains it (or the point is invalid)."""
        lon = np.asarray(lon, dtype=float)
        lat = np.asarray(lat, dtype=float)
        out = np.full(lon.shape[0], -1, dtype=np.int64)
        ok = np.flatnonzero(lonlat_ok(lon, lat))
        if ok.size == 0:
            return out
        if self._cells is not None:
            cells, res = self._cells, self._resolution
            out[ok] = [
                cells.get(h3.latlng_to_cell(la, lo, res), -1)
                for lo, la in zip(lon[ok].tolist(), lat[ok].tolist(), strict=True)
            ]
            return out
        pts = shapely.points(lon[ok], lat[ok])
        p_idx, g_idx = self._tree.query(pts, predicate="intersects")
        # Several hits for a border point: keep the smallest region index.
        order = np.lexsort((g_idx, p_idx))
        p_idx, g_idx = p_idx[order], g_idx[order]
        first = np.ones(p_idx.size, dtype=bool)
        first[1:] = p_idx[1:] != p_idx[:-1]
        out[ok[p_idx[first]]] = g_idx[first]
        return out


def to_ewkt(geom: BaseGeometry) -> str:
    return f"SRID=4326;{geom.wkt}"


def geojson_geometry(obj: Any) -> BaseGeometry:
    """Shapely geometry from a GeoJSON geometry object (raises :class:`GeoError`, a
    ``ValueError``, when malformed: a wrong type, non-numeric or non-finite coordinates, an
    unclosed ring)."""
    if not isinstance(obj, dict):
        raise GeoError(f"malformed geometry (a GeoJSON geometry is an object, not {short(obj)})")
    try:
        geom = shapely.geometry.shape(obj)
    except Exception as exc:  # shapely raises a mix of types for malformed input
        raise GeoError(f"malformed geometry ({' '.join(str(exc).split())[:200]})") from exc
    if geom is None:
        raise GeoError("malformed geometry (no geometry)")
    if not geom.is_empty and not np.isfinite(shapely.get_coordinates(geom)).all():
        raise GeoError("malformed geometry (a coordinate is not a finite number)")
    return geom
