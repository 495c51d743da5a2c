"""The search filters, described once: which regions may be answers.

:data:`FILTER_FIELDS` is the one description of the filters. The CLI's options
(``--bbox``...), the facade's keywords (:class:`musecl_store.api.SearchOptions`) and the
HTTP parameters are made from it, and :func:`filters_from` checks every value in one
place: a bad one raises a :class:`SearchError` whose ``parameter`` names it, which the CLI
turns into a usage error naming its option and the server into a 422 naming its parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from musecl_store import geo
from musecl_store.errors import MuseclError


@dataclass(frozen=True)
class FilterField:
    """One filter: its keyword (also the HTTP parameter; the CLI option is ``--`` and the
    keyword with dashes), what it takes, and its help."""

    name: str
    takes: Literal["coordinates", "polygon", "flag"]
    help: str
    metavar: str | None = None  # the coordinates' names, e.g. "LON,LAT,KM"

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


FILTER_FIELDS: tuple[FilterField, ...] = (
    FilterField(
        "bbox",
        "coordinates",
        "Only regions whose centroid lies in this box.",
        "MINLON,MINLAT,MAXLON,MAXLAT",
    ),
    FilterField(
        "near", "coordinates", "Only regions whose centroid is within KM of LON,LAT.", "LON,LAT,KM"
    ),
    FilterField(
        "polygon",
        "polygon",
        "Only regions whose centroid lies in this polygon (WKT or GeoJSON).",
        "WKT_OR_GEOJSON",
    ),
    FilterField("same_city", "flag", "Only regions of the query's city."),
    FilterField("other_cities", "flag", "Only regions of other cities than the query's."),
    FilterField("exclude_adjacent", "flag", "Leave out regions touching the query region."),
)
FILTER_NAMES = tuple(f.name for f in FILTER_FIELDS)


class SearchOptions(TypedDict, total=False):
    """The keywords of :meth:`musecl_store.api.Store.similar_many` and
    :meth:`~musecl_store.api.Store.search_many` (all
    optional); with ``point`` and ``vector``, those of :class:`Search`."""

    k: int  # how many regions (10)
    # The filters (FILTER_FIELDS; a test keeps the two in step): numbers as a sequence or
    # as comma-separated text, checked by the search, which names a bad one.
    bbox: Sequence[float] | str | None  # minlon, minlat, maxlon, maxlat
    near: Sequence[float] | str | None  # lon, lat, km
    polygon: str | BaseGeometry | None  # WKT, GeoJSON or shapely
    same_city: bool
    other_cities: bool
    exclude_adjacent: bool
    geometry: bool  # each region's polygon (a GeoDataFrame from similar)
    attention: bool  # each region's modality attention
    kind: str  # fused (default), remote, street or poi
    model_version: int | None  # default: the city's active one


class Search(SearchOptions, total=False):
    """The keywords of :meth:`musecl_store.api.Store.similar` and
    :meth:`~musecl_store.api.Store.search` (all optional)."""

    point: tuple[float, float] | str | None  # lon, lat: search from the region containing it
    vector: Sequence[float] | np.ndarray | None  # search from a vector of the embeddings' dimension


class SearchError(MuseclError, ValueError):
    """A query that cannot be answered as asked (the message says why); ``parameter`` is
    the keyword at fault when one is (``"bbox"``, ``"k"``...), which the CLI shows as its
    option and the server as the 422's parameter."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Filters:
    """Which regions may be answers. All given conditions must hold."""

    bbox: tuple[float, float, float, float] | None = None
    polygon: BaseGeometry | None = None
    near: tuple[float, float, float] | None = None  # lon, lat, km
    same_city: bool = False
    other_cities: bool = False
    exclude_adjacent: bool = False
    include_self: bool = False

    def __post_init__(self) -> None:
        if self.same_city and self.other_cities:
            raise SearchError(
                "same_city and other_cities exclude each other; pick one", "other_cities"
            )
        if self.bbox is not None:
            bbox = numbers(self.bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "bbox")
            minx, miny, maxx, maxy = bbox
            if not (minx < maxx and miny < maxy):
                raise SearchError(
                    f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT with MIN < MAX, got {bbox}", "bbox"
                )
            object.__setattr__(self, "bbox", bbox)
        if self.near is not None:
            object.__setattr__(self, "near", numbers(self.near, "LON,LAT,KM", "near"))
        if self.polygon is not None:
            if not isinstance(self.polygon, BaseGeometry):
                raise SearchError(
                    f"the filter polygon must be a shapely geometry, WKT or GeoJSON, not "
                    f"{geo.short(self.polygon)}",
                    "polygon",
                )
            _check_polygon(self.polygon)

    @property
    def spatial(self) -> bool:
        return self.bbox is not None or self.polygon is not None or self.near is not None


def numbers(value: Any, names: str, what: str) -> tuple[float, ...]:
    """``geo.coordinates`` of a filter's numbers, failing as a SearchError naming the filter."""
    try:
        return geo.coordinates(value, names)
    except ValueError as exc:
        raise SearchError(f"{what}: {exc}", what) from exc


def _check_polygon(geom: BaseGeometry) -> None:
    """A filter polygon must be a non-empty (Multi)Polygon with lon/lat coordinates."""
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise SearchError(f"the filter polygon must be a Polygon, not {geom.geom_type}", "polygon")
    if geom.is_empty:
        raise SearchError("the filter polygon is empty", "polygon")
    xy = shapely.get_coordinates(geom)
    if not geo.lonlat_ok(xy[:, 0], xy[:, 1]).all():
        raise SearchError(
            "the filter polygon's coordinates must be longitude/latitude (finite, "
            "-180..180, -90..90)",
            "polygon",
        )
    if not geom.area > 0:
        raise SearchError("the filter polygon has no area", "polygon")


def parse_polygon(text: str) -> BaseGeometry:
    """A polygon from WKT or GeoJSON text; raises SearchError naming the problem.

    An invalid polygon (a bow-tie) is repaired with ``make_valid``; the result must be a
    non-empty Polygon or MultiPolygon in lon/lat."""
    if not isinstance(text, str):
        raise SearchError(
            f"the polygon must be WKT or GeoJSON text, not {geo.short(text)}", "polygon"
        )
    text = text.strip()
    try:
        if text.startswith("{"):
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("type") == "Feature":
                obj = obj.get("geometry")
            geom = geo.geojson_geometry(obj)
        else:
            with np.errstate(all="ignore"):  # "1e400" or "nan" in WKT: refused below, quietly
                geom = shapely.from_wkt(text)
    except Exception as exc:  # shapely, json and GEOS raise many types
        why = " ".join(str(exc).split())  # one line: GEOS quotes the input back
        why = why if len(why) <= 160 else f"{why[:157]}..."
        raise SearchError(
            f"cannot read the polygon ({why}); give WKT or GeoJSON", "polygon"
        ) from exc
    if geom is None:
        raise SearchError("cannot read the polygon (no geometry); give WKT or GeoJSON", "polygon")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise SearchError(f"the filter polygon must be a Polygon, not {geom.geom_type}", "polygon")
    xy = shapely.get_coordinates(geom)
    if not geo.lonlat_ok(xy[:, 0], xy[:, 1]).all():
        _check_polygon(geom)  # says why
    if not geom.is_valid:
        try:
            geom = geo.polygonal(shapely.make_valid(geom))
        except shapely.errors.GEOSException as exc:
            raise SearchError(f"cannot repair the polygon ({exc})", "polygon") from exc
    _check_polygon(geom)
    return geom


def filters_from(keywords: Mapping[str, Any]) -> Filters:
    """The :class:`Filters` of a search's keywords (the names of :data:`FILTER_FIELDS`;
    others are ignored). Coordinates may be given as text (``"8.5,47.3,2"``) or numbers,
    a polygon as WKT, GeoJSON or a shapely geometry.

    Raises:
        SearchError: a bad value, naming its parameter.
    """
    polygon = keywords.get("polygon")
    return Filters(
        bbox=keywords.get("bbox"),
        polygon=parse_polygon(polygon) if isinstance(polygon, str) else polygon,
        near=keywords.get("near"),
        same_city=bool(keywords.get("same_city", False)),
        other_cities=bool(keywords.get("other_cities", False)),
        exclude_adjacent=bool(keywords.get("exclude_adjacent", False)),
    )
