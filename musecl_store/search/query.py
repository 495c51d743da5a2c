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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from pyproj import Geod
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import geo
from musecl_store.search.filters import Filters, SearchError, numbers
from musecl_store.search.hits import Hit, hits_of, percentiles
from musecl_store.search.index import RegionIndex
from musecl_store.store import dialect
from musecl_store.store.chunks import chunked
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Embedding, Region

_GEOD = Geod(ellps="WGS84")


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
    point: tuple[float, float] | str | None = None  # text "LON,LAT" is read and checked
    _pk: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.vector is not None:
            self.vector = query_vector(self.vector)
        if self.point is not None:
            lon, lat = numbers(self.point, "LON,LAT", "point")
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


def unit_vector(raw: np.ndarray) -> np.ndarray:
    """A checked query vector (:func:`query_vector`) at unit length, as float32. Scaled by
    its largest value first, in float64: the squares of values near float32's limits (or
    of subnormal ones) would overflow (or vanish) and give an infinite (or zero) norm."""
    scaled = raw / np.abs(raw).max()
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


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


def candidates(
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
    return adjacent_many(session, [pk])[pk]


def adjacent_many(session: Session, pks: Sequence[int]) -> dict[int, np.ndarray]:
    """:func:`_adjacent` of many regions, in few queries: the regions are grouped by the cell
    of a grid (8 region widths a side) they start in, and each group's neighbours come from
    one spatial-index query over the group's box, then the exact test per region."""
    shapes: dict[int, BaseGeometry] = {}
    for chunk in chunked(sorted({int(p) for p in pks})):
        rows = session.execute(select(Region.id, Region.geom).where(Region.id.in_(chunk))).all()
        shapes.update((int(pk), to_shape(g)) for pk, g in rows)
    if not shapes:
        return {}
    bounds = {pk: g.bounds for pk, g in shapes.items()}
    size = [max(b[2] - b[0], b[3] - b[1]) for b in bounds.values()]
    cell = 8 * max(float(np.median(size)), 1e-6)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for pk, b in bounds.items():
        groups[(int(b[0] // cell), int(b[1] // cell))].append(pk)
    name = dialect.name(session)
    out: dict[int, np.ndarray] = {}
    for members in groups.values():
        box = np.array([bounds[pk] for pk in members])
        lo, hi = box[:, :2].min(axis=0) - 1e-6, box[:, 2:].max(axis=0) + 1e-6
        frame = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        rows = session.execute(
            select(Region.id, Region.geom).where(
                dialect.in_bbox("regions", Region.geom, Region.id, frame, name)
            )
        ).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        tree = shapely.STRtree([to_shape(r[1]) for r in rows])
        for pk in members:
            grown = shapes[pk].buffer(1e-9)  # shared edges computed apart must still meet
            near = ids[tree.query(grown, predicate="intersects")]
            out[pk] = near[near != pk]
    return out


def check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SearchError(f"k must be an integer of at least 1, not {geo.short(k)}")


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
    check_k(k)
    query_pk, query_city, vec = _query_vector_of(session, index, query, filters)
    excluded = set() if (filters.include_self or query_pk is None) else {int(query_pk)}
    if filters.exclude_adjacent:
        if query_pk is None:
            raise SearchError("excluding adjacent regions needs a query region (or point)")
        excluded |= set(_adjacent(session, query_pk).tolist())
    mv, kind = index.stamp.model_version, index.stamp.kind
    allowed = candidates(session, mv, kind, filters, query_city)
    q = vec / max(float(np.linalg.norm(vec)), 1e-12)
    if allowed is not None and len(allowed) <= brute_force_limit:
        pks = np.array([p for p in allowed if int(p) not in excluded], dtype=np.int64)
        if not len(pks):
            return []
        scores = index.vectors(pks) @ q
        order = np.lexsort((pks, -scores))[:k]
        ranked = list(zip(pks[order].tolist(), scores[order].tolist(), strict=True))
        reference = scores  # every candidate that passes the filters
        members = None  # every hit is among them
    else:
        ranked = _ranked_by_index(index, vec, k, excluded, allowed)
        sample_pks, sample_vecs = index.sample(index.sample_size)
        keep = ~np.isin(sample_pks, np.fromiter(excluded, np.int64, len(excluded)))
        if allowed is not None:
            keep &= np.isin(sample_pks, allowed)
        reference = sample_vecs[keep] @ q
        members = set(sample_pks[keep].tolist())
    hits = hits_of(session, ranked, mv, with_geometry, with_attention)
    percentiles(hits, ranked, np.asarray(reference, dtype=np.float64), members)
    return hits


def _query_vector_of(
    session: Session, index: RegionIndex, query: Query, filters: Filters
) -> tuple[int | None, int | None, np.ndarray]:
    """(the query region's pk, its city id, the query vector) of a query by region, point
    or vector, the index brought up to date on the way.

    Raises:
        SearchError: no or several query sources, an unknown region, a point in no region, a
            vector of the wrong length, a city filter without a query city.
    """
    sources = [query.region_id is not None, query.vector is not None, query.point is not None]
    if sum(sources) != 1:
        raise SearchError("give exactly one of a region id, a vector or a point")
    mv, kind = index.stamp.model_version, index.stamp.kind
    query_pk, query_city = None, None
    if query.point is not None:
        lon, lat = cast(tuple[float, float], query.point)  # numbers once Query is made
        query_pk, _ = region_at(session, lon, lat, city=query.city)
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
        vec = unit_vector(raw)
        if filters.same_city or filters.other_cities:
            if query.city is None:
                raise SearchError("same/other-city filters need --city for a vector query")
            query_city = get_city(session, query.city).id
    if (filters.same_city or filters.other_cities) and query_city is None:
        raise SearchError("same/other-city filters need a query city")
    return query_pk, query_city, vec


def _ranked_by_index(
    index: RegionIndex,
    vec: np.ndarray,
    k: int,
    excluded: set[int],
    allowed: np.ndarray | None,
) -> list[tuple[int, float]]:
    """The best k (pk, score) of the index that are not excluded and (given ``allowed``)
    allowed: searched with a growing over-fetch until k pass."""
    allowed_set = None if allowed is None else set(allowed.tolist())
    ranked: list[tuple[int, float]] = []
    fetch = k + len(excluded)
    total = int(index.cpu_index.ntotal)
    while True:
        scores, ids = index.search_snapshot(vec, min(fetch, total))
        ranked = [
            (int(i), float(s))
            for i, s in zip(ids[0], scores[0], strict=True)
            if i >= 0 and int(i) not in excluded and (allowed_set is None or int(i) in allowed_set)
        ]
        if len(ranked) >= k or fetch >= total:
            break
        fetch *= 4
    return ranked[:k]


# ------------------------------------------------------------------ many queries at once
