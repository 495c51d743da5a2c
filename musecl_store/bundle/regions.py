"""The regions: the polygons of regions.geojson, or the H3 cells that tile boundary.geojson."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import shapely
from pyproj import CRS
from shapely.geometry import MultiPolygon

from musecl_store import geo
from musecl_store.bundle.city import CitySpec
from musecl_store.bundle.files import BOUNDARY, CITY, MAX_REGION_ID, REGIONS, is_file
from musecl_store.bundle.geojson import (
    NotStreamable,
    check_lonlat,
    features,
    fix,
    stream_features,
)
from musecl_store.bundle.report import MAX_LISTED, Report
from musecl_store.errors import BundleError, BundleNotFoundError
from musecl_store.text import bad_char

DEFAULT_H3_RESOLUTION = 8


@dataclass
class RegionRecord:
    """A region; its geometry is kept as WKB (a few times smaller than a shapely object)."""

    region_id: str
    wkb: bytes
    h3_cell: str | None = None

    @property
    def geom(self) -> MultiPolygon:
        return shapely.from_wkb(self.wkb)


def read_regions(
    root: Path, city: CitySpec, report: Report, *, max_cells: int
) -> tuple[list[RegionRecord], bool]:
    """Regions from regions.geojson, or H3 cells tiling boundary.geojson (into at most
    ``max_cells`` cells).

    Returns:
        (regions, whether they are H3 cells).
    """
    crs = geo.parse_crs(city.crs)
    rp = geo.Reprojector(crs)
    if is_file(root / REGIONS):
        return _read_region_polygons(root, crs, rp, report), False
    if not is_file(root / BOUNDARY):
        raise BundleNotFoundError(
            f"the bundle needs {REGIONS} or, to tile it into H3 cells, {BOUNDARY}; "
            f"neither is in {root}",
            file=REGIONS,
        )
    parts = _boundary_parts(root, crs, rp, report)
    res = city.h3_resolution
    if res is None:
        res = DEFAULT_H3_RESOLUTION
        report.note(CITY, None, f"no h3_resolution given; tiling the boundary at resolution {res}")
    return _h3_regions(parts, res, max_cells), True


# ---------------------------------------------------------------------------- boundary.geojson


def _boundary_parts(root: Path, crs: CRS, rp: geo.Reprojector, report: Report) -> list[Any]:
    """The polygons of boundary.geojson, in lon/lat, repaired."""
    feats = features(root, BOUNDARY, crs)
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
        check_lonlat(g, BOUNDARY, crs, raw, no)
        g, why = fix(g, BOUNDARY, no)
        if why:
            report.fix(BOUNDARY, no, f"invalid boundary ({why}) repaired with make_valid")
        parts.extend(g.geoms)
    if not parts:
        raise BundleError("has no polygon", file=BOUNDARY)
    return parts


def _h3_regions(parts: list[Any], res: int, max_cells: int) -> list[RegionRecord]:
    """The H3 cells of resolution ``res`` whose centre lies in the boundary, as regions."""
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
    if estimate > max_cells:
        raise BundleError(
            f"tiling the boundary at H3 resolution {res} would make about {estimate:,.0f} "
            f"regions (at most {max_cells:,}); use a coarser h3_resolution in city.json",
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
    return regions


# ---------------------------------------------------------------------------- regions.geojson


def _read_region_polygons(
    root: Path, crs: CRS, rp: geo.Reprojector, report: Report
) -> list[RegionRecord]:
    """Streams regions.geojson feature by feature: the parsed document of a million regions
    would take GiBs. A file that cannot be streamed (an odd layout, broken JSON) is read
    whole, which gives the same regions or the same error."""
    try:
        found = Report()
        regions = _region_polygons(stream_features(root, REGIONS, crs), crs, rp, found)
    except NotStreamable:
        found = Report()
        regions = _region_polygons(iter(features(root, REGIONS, crs)), crs, rp, found)
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
        rid = _region_id(feat, no, first_seen, report)
        fixed = _region_shape(feat, rid, no, crs, rp, report)
        regions.append(RegionRecord(rid, fixed.wkb, None))
        geoms.append(fixed)
    if not regions:
        raise BundleError("holds no region", file=REGIONS)
    _check_overlaps(regions, geoms)
    return regions


def _region_id(feat: Any, no: int, first_seen: dict[str, int], report: Report) -> str:
    """The checked, unique ``region_id`` of feature ``no`` (recorded in ``first_seen``)."""
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
    return rid


def _region_shape(
    feat: dict[str, Any], rid: str, no: int, crs: CRS, rp: geo.Reprojector, report: Report
) -> MultiPolygon:
    """Region ``rid``'s polygon in lon/lat, repaired (and the repair reported)."""
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
    check_lonlat(g, REGIONS, crs, raw, no)
    fixed, why = fix(g, REGIONS, no)
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
    return fixed


def _check_overlaps(regions: list[RegionRecord], geoms: list[MultiPolygon]) -> None:
    """Fatal when two regions overlap by more than a sliver."""
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
