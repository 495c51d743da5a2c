"""Geometry helpers: CRS handling, H3 tiling, validity fixes and point-in-region lookup."""

from __future__ import annotations

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

WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")


def parse_crs(value: str) -> CRS:
    """Parse a CRS name such as ``EPSG:4326``; raises ``ValueError`` naming the value."""
    try:
        return CRS.from_user_input(value)
    except (CRSError, TypeError) as exc:
        raise ValueError(f"unknown CRS {value!r} ({exc})") from exc


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

    Raises:
        ValueError: naming what is wrong.
    """
    try:
        parts = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        parts = ()
    wanted = names.split(",")
    if len(parts) != len(wanted) or not all(np.isfinite(parts)):
        raise ValueError(f"expected {names}, got {value!r}")
    for name, v in zip(wanted, parts, strict=True):
        if name.endswith("LON") and not -180 <= v <= 180:
            raise ValueError(f"longitude {v} is outside -180..180")
        if name.endswith("LAT") and not -90 <= v <= 90:
            raise ValueError(f"latitude {v} is outside -90..90")
    return parts


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


def cell_polygon(cell: str) -> Polygon:
    """An H3 cell's boundary as a lon/lat polygon."""
    return Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)])


def h3_cells(boundary: BaseGeometry, resolution: int) -> list[str]:
    """The H3 cells at ``resolution`` whose centre lies inside ``boundary``, sorted."""
    return sorted(h3.geo_to_cells(shapely.geometry.mapping(boundary), resolution))


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
    """Shapely geometry from a GeoJSON geometry object (raises ValueError when malformed)."""
    try:
        return shapely.geometry.shape(obj)
    except Exception as exc:  # shapely raises a mix of types for malformed input
        raise ValueError(f"malformed geometry ({exc})") from exc
