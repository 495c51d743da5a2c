"""Nearest-region search: from a region, a vector or a point, with exact spatial filters.

Similarity is the cosine of the embeddings (inner product of L2-normalised vectors).
Filters keep a region when its **centroid** lies in the bbox, in the polygon, or within the
distance (geodesic, WGS84) of the point; ``same_city``/``other_cities`` compare with the
query region's city; ``exclude_adjacent`` drops regions whose polygon touches the query's.

With a filter the answer is exact — equal to brute force over the filtered set: the
candidates come from SQL through the spatial index (a box prefilter, then the exact test),
and when they are few (``brute_force_limit``) their vectors are scored directly; when they
are many, the index is searched with a growing over-fetch until k candidates pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from pyproj import Geod
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import dialect, geo
from musecl_store.errors import MuseclError
from musecl_store.index import RegionIndex
from musecl_store.summary import get_city
from musecl_store.tables import City, Embedding, Region

_GEOD = Geod(ellps="WGS84")


class SearchError(MuseclError, ValueError):
    """A query that cannot be answered as asked (the message says why)."""


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
            raise SearchError("same_city and other_cities exclude each other; pick one")
        if self.bbox is not None:
            bbox = _numbers(self.bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "bbox")
            minx, miny, maxx, maxy = bbox
            if not (minx < maxx and miny < maxy):
                raise SearchError(
                    f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT with MIN < MAX, got {bbox}"
                )
            object.__setattr__(self, "bbox", bbox)
        if self.near is not None:
            object.__setattr__(self, "near", _numbers(self.near, "LON,LAT,KM", "near"))
        if self.polygon is not None:
            if not isinstance(self.polygon, BaseGeometry):
                raise SearchError(
                    f"the filter polygon must be a shapely geometry, WKT or GeoJSON, not "
                    f"{geo.short(self.polygon)}"
                )
            _check_polygon(self.polygon)

    @property
    def spatial(self) -> bool:
        return self.bbox is not None or self.polygon is not None or self.near is not None


def _numbers(value: Any, names: str, what: str) -> tuple[float, ...]:
    """``geo.coordinates`` of a filter's numbers, failing as a SearchError naming the filter."""
    try:
        return geo.coordinates(value, names)
    except ValueError as exc:
        raise SearchError(f"{what}: {exc}") from exc


def _check_polygon(geom: BaseGeometry) -> None:
    """A filter polygon must be a non-empty (Multi)Polygon with lon/lat coordinates."""
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise SearchError(f"the filter polygon must be a Polygon, not {geom.geom_type}")
    if geom.is_empty:
        raise SearchError("the filter polygon is empty")
    xy = shapely.get_coordinates(geom)
    if not geo.lonlat_ok(xy[:, 0], xy[:, 1]).all():
        raise SearchError(
            "the filter polygon's coordinates must be longitude/latitude (finite, "
            "-180..180, -90..90)"
        )
    if not geom.area > 0:
        raise SearchError("the filter polygon has no area")


def parse_polygon(text: str) -> BaseGeometry:
    """A polygon from WKT or GeoJSON text; raises SearchError naming the problem.

    An invalid polygon (a bow-tie) is repaired with ``make_valid``; the result must be a
    non-empty Polygon or MultiPolygon in lon/lat."""
    if not isinstance(text, str):
        raise SearchError(f"the polygon must be WKT or GeoJSON text, not {geo.short(text)}")
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
        raise SearchError(f"cannot read the polygon ({why}); give WKT or GeoJSON") from exc
    if geom is None:
        raise SearchError("cannot read the polygon (no geometry); give WKT or GeoJSON")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise SearchError(f"the filter polygon must be a Polygon, not {geom.geom_type}")
    xy = shapely.get_coordinates(geom)
    if not geo.lonlat_ok(xy[:, 0], xy[:, 1]).all():
        _check_polygon(geom)  # says why
    if not geom.is_valid:
        try:
            geom = geo.polygonal(shapely.make_valid(geom))
        except shapely.errors.GEOSException as exc:
            raise SearchError(f"cannot repair the polygon ({exc})") from exc
    _check_polygon(geom)
    return geom


@dataclass
class Hit:
    rank: int
    region_id: str
    city: str
    score: float
    centroid: tuple[float, float]
    geometry: dict[str, Any] | None = None
    attention: dict[str, float] | None = None
    percentile: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rank": self.rank,
            "region_id": self.region_id,
            "city": self.city,
            "score": round(self.score, 6),
            "percentile": self.percentile,
            "centroid": [round(c, 7) for c in self.centroid],
        }
        if self.geometry is not None:
            out["geometry"] = self.geometry
        if self.attention is not None:
            out["attention"] = self.attention
        return out


@dataclass
class Query:
    """What to search from: exactly one of a region, a vector or a point.

    A vector must be a 1-D sequence of finite numbers (not all zeros) that fit in float32;
    its length is checked against the index when searching. A point is lon, lat.

    Raises:
        SearchError: a vector or point that cannot be a query, naming what is wrong.
    """

    city: str | None = None
    region_id: str | None = None
    vector: np.ndarray | None = None
    point: tuple[float, float] | None = None
    _pk: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.vector is not None:
            self.vector = query_vector(self.vector)
        if self.point is not None:
            lon, lat = _numbers(self.point, "LON,LAT", "point")
            self.point = (lon, lat)
        if self.region_id is not None and not isinstance(self.region_id, str):
            raise SearchError(f"a region id is a string, not {geo.short(self.region_id)}")


def query_vector(value: Any) -> np.ndarray:
    """A query vector as float64, 1-D; raises SearchError saying what is wrong with it."""
    if isinstance(value, (str, bytes, dict)):
        raise SearchError(f"the query vector must be a list of numbers, not {geo.short(value)}")
    try:
        raw = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SearchError(f"the query vector must be a list of numbers ({exc})") from exc
    if raw.ndim != 1:
        raise SearchError(
            f"the query vector must be one row of numbers (1-D), not an array of shape {raw.shape}"
        )
    if raw.size == 0:
        raise SearchError("the query vector is empty")
    big = float(np.finfo(np.float32).max)
    if not np.isfinite(raw).all():
        raise SearchError("the query vector holds NaN or infinite values; give finite numbers")
    if np.abs(raw).max() > big:
        raise SearchError(f"the query vector holds values beyond float32's range (±{big:.3g})")
    if not np.any(raw):
        raise SearchError("the query vector is all zeros; it has no direction to compare")
    return raw


def region_at(session: Session, lon: float, lat: float, city: str | None = None) -> tuple[int, str]:
    """(pk, region_id) of the region containing a point; raises SearchError if none does."""
    name = dialect.name(session)
    stmt = select(Region.id, Region.region_id, Region.geom).where(
        dialect.in_bbox("regions", Region.geom, Region.id, (lon, lat, lon, lat), name)
    )
    if city is not None:
        stmt = stmt.where(Region.city_id == get_city(session, city).id)
    for pk, rid, geom in session.execute(stmt.order_by(Region.region_id)).all():
        if to_shape(geom).covers(shapely.Point(lon, lat)):
            return int(pk), rid
    where = f" of city {city!r}" if city else ""
    raise SearchError(f"no region{where} contains the point ({lon}, {lat})")


def _candidates(
    session: Session, model_version: int, kind: str, filters: Filters, query_city: int | None
) -> np.ndarray | None:
    """Region pks the spatial and city filters allow, or None when there are none."""
    if not (filters.spatial or filters.same_city or filters.other_cities):
        return None
    name = dialect.name(session)
    stmt = (
        select(Region.id, func.ST_X(Region.centroid), func.ST_Y(Region.centroid))
        .join(Embedding, Embedding.region_pk == Region.id)
        .where(Embedding.model_version_id == model_version, Embedding.kind == kind)
    )
    if filters.same_city:
        stmt = stmt.where(Region.city_id == query_city)
    if filters.other_cities:
        stmt = stmt.where(Region.city_id != query_city)
    boxes = []
    if filters.bbox is not None:
        boxes.append(filters.bbox)
    if filters.polygon is not None:
        boxes.append(filters.polygon.bounds)
    if filters.near is not None:
        lon, lat, km = filters.near
        dlat = km / 110.574 * 1.01
        dlon = km / (111.320 * max(np.cos(np.radians(min(abs(lat) + dlat, 89.9))), 1e-6)) * 1.01
        boxes.append((lon - dlon, lat - dlat, lon + dlon, lat + dlat))
    for box in boxes:
        stmt = stmt.where(dialect.in_bbox("regions", Region.centroid, Region.id, box, name))
    rows = session.execute(stmt).all()
    pks = np.array([r[0] for r in rows], dtype=np.int64)
    x = np.array([r[1] for r in rows], dtype=float)
    y = np.array([r[2] for r in rows], dtype=float)
    keep = np.ones(len(pks), dtype=bool)
    if filters.bbox is not None:
        minx, miny, maxx, maxy = filters.bbox
        keep &= (x >= minx) & (x <= maxx) & (y >= miny) & (y <= maxy)
    if filters.polygon is not None and len(pks):
        keep &= shapely.covers(filters.polygon, shapely.points(x, y))
    if filters.near is not None and len(pks):
        lon, lat, km = filters.near
        _, _, dist = _GEOD.inv(np.full(len(x), lon), np.full(len(y), lat), x, y)
        keep &= dist <= km * 1000.0
    return pks[keep]


def _adjacent(session: Session, pk: int) -> np.ndarray:
    """Regions whose polygon touches (or overlaps) region ``pk``'s."""
    geom = to_shape(session.execute(select(Region.geom).where(Region.id == pk)).scalar_one())
    name = dialect.name(session)
    rows = session.execute(
        select(Region.id, Region.geom).where(
            dialect.in_bbox("regions", Region.geom, Region.id, geom.bounds, name), Region.id != pk
        )
    ).all()
    grown = geom.buffer(1e-9)  # shared edges computed apart must still meet
    shapely.prepare(grown)
    return np.array([r[0] for r in rows if grown.intersects(to_shape(r[1]))], dtype=np.int64)


def similar(
    session: Session,
    index: RegionIndex,
    query: Query,
    k: int = 10,
    filters: Filters | None = None,
    *,
    with_geometry: bool = False,
    with_attention: bool = False,
    brute_force_limit: int = 200_000,
) -> list[Hit]:
    """The k regions most similar to the query, best first.

    Raises:
        SearchError: no or several query sources, an unknown region, a point in no region.
    """
    filters = filters or Filters()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SearchError(f"k must be an integer of at least 1, not {geo.short(k)}")
    sources = [query.region_id is not None, query.vector is not None, query.point is not None]
    if sum(sources) != 1:
        raise SearchError("give exactly one of a region id, a vector or a point")
    mv, kind = index.stamp.model_version, index.stamp.kind
    query_pk, query_city = None, None
    if query.point is not None:
        query_pk, _ = region_at(session, *query.point, city=query.city)
    elif query.region_id is not None:
        if query.city is None:
            raise SearchError("a region id needs its city")
        c = get_city(session, query.city)
        query_pk = session.scalar(
            select(Region.id).where(Region.city_id == c.id, Region.region_id == query.region_id)
        )
        if query_pk is None:
            raise SearchError(f"city {query.city!r} has no region {query.region_id!r}")
    index.refresh(session)  # once per query: the index must agree with the database
    if query_pk is not None:
        query_city = session.scalar(select(Region.city_id).where(Region.id == query_pk))
        try:
            vec = index.vectors(np.array([query_pk]))[0]
        except RuntimeError as exc:
            raise SearchError(
                f"region {query.region_id or query.point} has no {kind} embedding "
                f"in model version {mv}"
            ) from exc
    else:
        assert query.vector is not None
        raw = query_vector(query.vector)
        if raw.shape[0] != index.stamp.dim:
            raise SearchError(
                f"the query vector has {raw.shape[0]} values; the {kind} vectors of model "
                f"version {mv} have {index.stamp.dim}"
            )
        # unit length in float64 first: float32 norms of values near its limits overflow
        vec = (raw / np.linalg.norm(raw)).astype(np.float32)
        if filters.same_city or filters.other_cities:
            if query.city is None:
                raise SearchError("same/other-city filters need --city for a vector query")
            query_city = get_city(session, query.city).id
    if (filters.same_city or filters.other_cities) and query_city is None:
        raise SearchError("same/other-city filters need a query city")

    excluded = set() if (filters.include_self or query_pk is None) else {int(query_pk)}
    if filters.exclude_adjacent:
        if query_pk is None:
            raise SearchError("excluding adjacent regions needs a query region (or point)")
        excluded |= set(_adjacent(session, query_pk).tolist())
    allowed = _candidates(session, mv, kind, filters, query_city)
    if allowed is not None and len(allowed) <= brute_force_limit:
        pks = np.array([p for p in allowed if int(p) not in excluded], dtype=np.int64)
        if not len(pks):
            return []
        q = vec / max(float(np.linalg.norm(vec)), 1e-12)
        scores = index.vectors(pks) @ q
        order = np.lexsort((pks, -scores))[:k]
        ranked = list(zip(pks[order].tolist(), scores[order].tolist(), strict=True))
        reference = scores  # every candidate that passes the filters
        members = None  # every hit is among them
    else:
        allowed_set = None if allowed is None else set(allowed.tolist())
        ranked = []
        fetch = k + len(excluded)
        total = int(index.cpu_index.ntotal)
        while True:
            scores, ids = index.search_snapshot(vec, min(fetch, total))
            ranked = [
                (int(i), float(s))
                for i, s in zip(ids[0], scores[0], strict=True)
                if i >= 0
                and int(i) not in excluded
                and (allowed_set is None or int(i) in allowed_set)
            ]
            if len(ranked) >= k or fetch >= total:
                break
            fetch *= 4
        ranked = ranked[:k]
        sample_pks, sample_vecs = index.sample(index.sample_size)
        keep = ~np.isin(sample_pks, np.fromiter(excluded, np.int64, len(excluded)))
        if allowed is not None:
            keep &= np.isin(sample_pks, allowed)
        q = vec / max(float(np.linalg.norm(vec)), 1e-12)
        reference = sample_vecs[keep] @ q
        members = set(sample_pks[keep].tolist())
    hits = _hits(session, ranked, mv, with_geometry, with_attention)
    _percentiles(hits, ranked, np.asarray(reference, dtype=np.float64), members)
    return hits


def _percentiles(
    hits: list[Hit],
    ranked: list[tuple[int, float]],
    reference: np.ndarray,
    members: set[int] | None,
) -> None:
    """Each hit's share (%) of the other reference regions that are less similar to the
    query; left None when fewer than 10 reference regions would make it meaningless."""
    reference = np.sort(reference)
    for h, (pk, _) in zip(hits, ranked, strict=True):
        # the hit itself does not count (members None: every hit is a reference region)
        others = len(reference) - (1 if members is None or pk in members else 0)
        if others < 10:
            continue
        below = int(np.searchsorted(reference, h.score - 1e-6, side="left"))
        h.percentile = round(min(100.0, 100.0 * below / others), 1)


def _hits(
    session: Session,
    ranked: list[tuple[int, float]],
    mv: int,
    with_geometry: bool,
    with_attention: bool,
) -> list[Hit]:
    if not ranked:
        return []
    pks = [p for p, _ in ranked]
    cols: list[Any] = [
        Region.id,
        Region.region_id,
        City.name,
        func.ST_X(Region.centroid),
        func.ST_Y(Region.centroid),
    ]
    if with_geometry:
        cols.append(func.ST_AsGeoJSON(Region.geom))
    rows = {
        r[0]: r
        for r in session.execute(
            select(*cols).join(City, City.id == Region.city_id).where(Region.id.in_(pks))
        ).all()
    }
    attention: dict[int, Any] = {}
    if with_attention:
        attention = dict(
            session.execute(
                select(Embedding.region_pk, Embedding.attention).where(
                    Embedding.model_version_id == mv,
                    Embedding.kind == "fused",
                    Embedding.region_pk.in_(pks),
                )
            ).all()
        )
    out = []
    for rank, (pk, score) in enumerate(ranked, start=1):
        r = rows[pk]
        out.append(
            Hit(
                rank,
                r[1],
                r[2],
                float(score),
                (float(r[3]), float(r[4])),
                json.loads(r[5]) if with_geometry else None,
                attention.get(pk) if with_attention else None,
            )
        )
    return out
