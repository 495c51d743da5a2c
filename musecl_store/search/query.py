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
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from pyproj import Geod
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import geo
from musecl_store.progress import progress
from musecl_store.search.features import locate
from musecl_store.search.filters import Filters, SearchError, numbers
from musecl_store.search.index import RegionIndex
from musecl_store.store import dialect
from musecl_store.store.chunks import chunked
from musecl_store.store.cities import get_city
from musecl_store.store.tables import City, Embedding, Region
from musecl_store.text import storable

_GEOD = Geod(ellps="WGS84")


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
    return _adjacent_many(session, [pk])[pk]


def _adjacent_many(session: Session, pks: Sequence[int]) -> dict[int, np.ndarray]:
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


def _check_k(k: Any) -> None:
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
    _check_k(k)
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
        vec = unit_vector(raw)
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


# ------------------------------------------------------------------ many queries at once

_BLOCK = 4096  # queries ranked together: one index search (per fetch size) per block
_SCORES = 8_000_000  # scores one batched matrix product may hold at once (32 MB of float32)


@dataclass
class Queries:
    """Many queries of one kind for :func:`similar_many`: the ids of regions of ``city``,
    lon/lat points (the region containing each; in ``city``, or in any city when it is None),
    or vectors (rows of a matrix or lists of numbers). Exactly one of them.

    Raises:
        SearchError: none or several kinds of queries, or queries that are not a list.
    """

    city: str | None = None
    region_ids: Sequence[Any] | None = None
    points: Sequence[Any] | None = None
    vectors: Sequence[Any] | np.ndarray | None = None

    def __post_init__(self) -> None:
        given = [
            (what, value)
            for what, value in (
                ("region ids", self.region_ids),
                ("points", self.points),
                ("vectors", self.vectors),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise SearchError("give exactly one of region ids, points or vectors")
        what, value = given[0]
        if isinstance(value, np.ndarray):
            if value.ndim == 0 or (what == "vectors" and value.ndim != 2):
                raise SearchError(f"the {what} must be a list, not an array of shape {value.shape}")
        elif isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
            raise SearchError(f"the {what} must be a list, not {geo.short(value)}")

    def items(self) -> list[Any]:
        value = next(v for v in (self.region_ids, self.points, self.vectors) if v is not None)
        return list(value)

    def label(self, i: int, item: Any) -> str | int:
        """What names query ``i`` in the answers: the region id, ``lon,lat``, or the vector's
        row number."""
        if self.vectors is not None:
            return i
        if self.points is not None:
            try:
                return ",".join(str(float(v)) for v in item)
            except (TypeError, ValueError, OverflowError):
                return geo.short(item)
        return item if isinstance(item, str) else geo.short(item)


@dataclass
class Answer:
    """One query's answer in a batch: its hits (best first), or the error that ``similar``
    would have raised for it alone (and no hits)."""

    query: str | int
    hits: list[Hit]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "hits": [h.to_dict() for h in self.hits], "error": self.error}


def similar_many(
    session: Session,
    index: RegionIndex,
    queries: Queries,
    k: int = 10,
    filters: Filters | None = None,
    *,
    with_geometry: bool = False,
    with_attention: bool = False,
    brute_force_limit: int = 200_000,
    show_progress: bool | None = False,
) -> list[Answer]:
    """:func:`similar` for many queries at once: one answer per query, in their order, each
    the same as ``similar`` gives for that query alone (hits, order, scores up to float32
    rounding, percentiles).

    The index is checked against the database once; query regions, points and their
    neighbours (``exclude_adjacent``) are found in bulk; the queries are scored together: one
    index search per over-fetch size, or one matrix product over the filtered candidates,
    per block of 4,096 queries.

    A query that cannot be answered (an unknown region, a point in no region, a region
    without an embedding, a malformed point or vector) gets an :class:`Answer` with
    ``error`` set to the message ``similar`` would raise, and no hits; the others are
    answered.

    Raises:
        SearchError: what is wrong for every query: ``k``, the filters, no or several kinds
            of queries, region ids without a city, ``exclude_adjacent`` or a city filter that
            vectors cannot have.
    """
    filters = filters or Filters()
    _check_k(k)
    mv, kind = index.stamp.model_version, index.stamp.kind
    city_filter = filters.same_city or filters.other_cities
    items = queries.items()
    n = len(items)
    labels = [queries.label(i, item) for i, item in enumerate(items)]
    errors: list[str | None] = [None] * n
    pks = np.full(n, -1, dtype=np.int64)  # the query region's, where there is one
    whats = [""] * n  # how similar's messages name a query region
    raw: list[np.ndarray | None] = [None] * n
    if queries.vectors is not None:
        if filters.exclude_adjacent:
            raise SearchError("excluding adjacent regions needs a query region (or point)")
        if city_filter and queries.city is None:
            raise SearchError("same/other-city filters need --city for a vector query")
        for i, item in enumerate(items):
            try:
                raw[i] = query_vector(item)
            except SearchError as exc:
                errors[i] = str(exc)
    elif queries.region_ids is not None:
        if queries.city is None:
            raise SearchError("a region id needs its city")
        _find_regions(session, queries.city, items, pks, whats, errors)
    else:
        _find_points(session, queries.city, items, pks, whats, errors)
    index.refresh(session)  # once for the batch: the index must agree with the database

    dim = index.stamp.dim
    vecs = np.zeros((n, dim), dtype=np.float32)
    city_of = np.full(n, -1, dtype=np.int64)  # the query's city, for same/other-city
    if queries.vectors is not None:
        if city_filter:
            assert queries.city is not None
            city_of[:] = get_city(session, queries.city).id
        for i, r in enumerate(raw):
            if r is not None and r.shape[0] != dim:
                errors[i] = (
                    f"the query vector has {r.shape[0]} values; the {kind} vectors of model "
                    f"version {mv} have {dim}"
                )
            elif r is not None:
                vecs[i] = unit_vector(r)
    else:
        _region_vectors(session, index, pks, whats, errors, vecs, city_of)

    live = [i for i in range(n) if errors[i] is None]
    excluded: dict[int, set[int]] = {
        i: set() if (filters.include_self or pks[i] < 0) else {int(pks[i])} for i in live
    }
    if filters.exclude_adjacent:
        adjacent = _adjacent_many(session, [int(pks[i]) for i in live])
        for i in live:
            excluded[i] |= set(adjacent[int(pks[i])].tolist())
    allowed: dict[int, np.ndarray | None] = {}  # by query city (-1: the same for all)

    def rank(block: list[int]) -> Iterator[tuple[int, Answer]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i in block:
            groups[int(city_of[i]) if city_filter else -1].append(i)
        ranked: dict[int, tuple[list[tuple[int, float]], list[float | None]]] = {}
        for key, members in groups.items():
            if key not in allowed:
                allowed[key] = _candidates(session, mv, kind, filters, None if key < 0 else key)
            cand = allowed[key]
            if cand is not None and len(cand) <= brute_force_limit:
                ranked.update(_scored_many(index, cand, members, vecs, excluded, k))
            else:
                ranked.update(_searched_many(index, cand, members, vecs, excluded, k))
        hit_pks = [pk for r, _ in ranked.values() for pk, _ in r]
        rows = _hit_rows(session, hit_pks, mv, with_geometry, with_attention)
        for i in block:
            hits = _make_hits(ranked[i][0], rows)
            for h, p in zip(hits, ranked[i][1], strict=True):
                h.percentile = p
            yield i, Answer(labels[i], hits)

    def answered() -> Iterator[tuple[int, Answer]]:
        for a in range(0, len(live), _BLOCK):
            yield from rank(live[a : a + _BLOCK])

    answers = [Answer(labels[i], [], errors[i]) for i in range(n)]
    for i, answer in progress(
        answered(), desc="similar", total=len(live), enabled=show_progress, unit="query"
    ):
        answers[i] = answer
    return answers


def _find_regions(
    session: Session,
    city: str,
    items: list[Any],
    pks: np.ndarray,
    whats: list[str],
    errors: list[str | None],
) -> None:
    """The pks of region ids of ``city`` (chunked IN lists); an error for those it lacks."""
    c = get_city(session, city)
    wanted = sorted({r for r in items if isinstance(r, str) and storable(r)})
    pk_of: dict[str, int] = {}
    for chunk in chunked(wanted):
        rows = session.execute(
            select(Region.region_id, Region.id).where(
                Region.city_id == c.id, Region.region_id.in_(chunk)
            )
        ).all()
        pk_of.update((str(r), int(pk)) for r, pk in rows)
    for i, r in enumerate(items):
        if not isinstance(r, str):
            errors[i] = f"a region id is a string, not {geo.short(r)}"
        elif r not in pk_of:
            errors[i] = f"city {city!r} has no region {r!r}"
        else:
            pks[i], whats[i] = pk_of[r], r


def _find_points(
    session: Session,
    city: str | None,
    items: list[Any],
    pks: np.ndarray,
    whats: list[str],
    errors: list[str | None],
) -> None:
    """The region containing each point, as :func:`region_at` finds it. In a city, all points
    at once (:func:`musecl_store.search.features.locate`: H3 cells by id, other polygons through an
    STR-tree); a point that is not strictly inside the region found (on a border, or outside
    the cell's polygon) is looked up with ``region_at``, whose answer is the reference."""
    at: list[tuple[int, float, float]] = []
    for i, item in enumerate(items):
        try:
            lon, lat = numbers(item, "LON,LAT", "point")
        except SearchError as exc:
            errors[i] = str(exc)
            continue
        at.append((i, lon, lat))
        whats[i] = f"({lon}, {lat})"
    unsure = at
    if city is not None and at:
        c = get_city(session, city)
        x = np.array([p[1] for p in at])
        y = np.array([p[2] for p in at])
        found = locate(session, c.id, x, y)
        shapes: dict[str, tuple[int, BaseGeometry]] = {}
        for chunk in chunked(sorted({r for r in found if r is not None})):
            rows = session.execute(
                select(Region.region_id, Region.id, Region.geom).where(
                    Region.city_id == c.id, Region.region_id.in_(chunk)
                )
            ).all()
            shapes.update((str(r), (int(pk), to_shape(g))) for r, pk, g in rows)
        geoms = np.array([shapes[r][1] if r in shapes else None for r in found], dtype=object)
        inside = shapely.contains_properly(geoms, shapely.points(x, y))  # None: False
        unsure = []
        for (i, lon, lat), r, sure in zip(at, found, inside.tolist(), strict=True):
            if sure and r is not None:
                pks[i] = shapes[r][0]
            else:
                unsure.append((i, lon, lat))
    for i, lon, lat in unsure:
        try:
            pks[i] = region_at(session, lon, lat, city=city)[0]
        except SearchError as exc:
            errors[i] = str(exc)


def _region_vectors(
    session: Session,
    index: RegionIndex,
    pks: np.ndarray,
    whats: list[str],
    errors: list[str | None],
    vecs: np.ndarray,
    city_of: np.ndarray,
) -> None:
    """Fill in the query regions' vectors and cities; an error for a region the index
    cannot give a vector of."""
    live = np.flatnonzero(pks >= 0)
    if not len(live):
        return
    city_by_pk: dict[int, int] = {}
    for chunk in chunked(sorted(set(pks[live].tolist()))):
        rows = session.execute(select(Region.id, Region.city_id).where(Region.id.in_(chunk)))
        city_by_pk.update((int(pk), int(cid)) for pk, cid in rows.all())
    try:
        vecs[live] = index.vectors(pks[live])
        missing: list[int] = []
    except RuntimeError:  # some region has no vector: find which
        missing = []
        for i in live.tolist():
            try:
                vecs[i] = index.vectors(pks[i : i + 1])[0]
            except RuntimeError:
                missing.append(i)
    st = index.stamp
    for i in missing:
        errors[i] = (
            f"region {whats[i]} has no {st.kind} embedding in model version {st.model_version}"
        )
    for i in live.tolist():
        city_of[i] = city_by_pk[int(pks[i])]


def _unit_rows(vecs: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """The query rows at unit length, computed as ``similar`` does for one query."""
    return np.stack([vecs[i] / max(float(np.linalg.norm(vecs[i])), 1e-12) for i in rows])


def _top(pks: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """``np.lexsort((pks, -scores))[:k]`` (best first, ties by pk) without sorting them all."""
    if len(scores) > k:
        kth = np.partition(-scores, k - 1)[k - 1]
        sel = np.flatnonzero(-scores <= kth)  # the k best and every tie of the k-th
        return sel[np.lexsort((pks[sel], -scores[sel]))][:k]
    return np.lexsort((pks, -scores))[:k]


def _scored_many(
    index: RegionIndex,
    cand: np.ndarray,
    members: list[int],
    vecs: np.ndarray,
    excluded: dict[int, set[int]],
    k: int,
) -> Iterator[tuple[int, tuple[list[tuple[int, float]], list[float | None]]]]:
    """The brute-force branch of ``similar`` for many queries: the candidates' vectors
    scored against all of them in one matrix product (in slices of bounded size)."""
    cand_vecs = index.vectors(cand)
    q = _unit_rows(vecs, members)
    step = max(1, _SCORES // max(len(cand), 1))
    for a in range(0, len(members), step):
        scores = cand_vecs @ q[a : a + step].T  # (candidates, queries)
        for j, i in enumerate(members[a : a + step]):
            pks, sc = cand, scores[:, j]
            if excluded[i]:
                keep = ~np.isin(cand, np.fromiter(excluded[i], np.int64, len(excluded[i])))
                pks, sc = cand[keep], sc[keep]
            order = _top(pks, sc, k)
            ranked = list(zip(pks[order].tolist(), sc[order].tolist(), strict=True))
            # every candidate is a reference region, the hits too
            yield i, (ranked, _percentile_values([s for _, s in ranked], [True] * len(ranked), sc))


def _searched_many(
    index: RegionIndex,
    cand: np.ndarray | None,
    members: list[int],
    vecs: np.ndarray,
    excluded: dict[int, set[int]],
    k: int,
) -> Iterator[tuple[int, tuple[list[tuple[int, float]], list[float | None]]]]:
    """The index branch of ``similar`` for many queries: queries that over-fetch as many
    rows are searched together, and those that found fewer than k passing rows go again
    with four times as many, as ``similar`` does for each."""
    allowed_set = None if cand is None else set(cand.tolist())
    total = int(index.cpu_index.ntotal)
    fetch = {i: k + len(excluded[i]) for i in members}
    ranked: dict[int, list[tuple[int, float]]] = {}
    pending = list(members)
    while pending:
        by_fetch: dict[int, list[int]] = defaultdict(list)
        for i in pending:
            by_fetch[min(fetch[i], total)].append(i)
        pending = []
        for f, group in by_fetch.items():
            step = max(1, _SCORES // max(f, 1))
            for a in range(0, len(group), step):
                part = group[a : a + step]
                scores, ids = index.search_snapshot(vecs[part], f)
                for row, i in enumerate(part):
                    found = [
                        (int(x), float(s))
                        for x, s in zip(ids[row], scores[row], strict=True)
                        if x >= 0
                        and int(x) not in excluded[i]
                        and (allowed_set is None or int(x) in allowed_set)
                    ]
                    if len(found) >= k or fetch[i] >= total:
                        ranked[i] = found[:k]
                    else:
                        fetch[i] *= 4
                        pending.append(i)
    sample_pks, sample_vecs = index.sample(index.sample_size)
    base = np.ones(len(sample_pks), bool) if cand is None else np.isin(sample_pks, cand)
    q = _unit_rows(vecs, members)
    step = max(1, _SCORES // max(len(sample_pks), 1))
    for a in range(0, len(members), step):
        reference = sample_vecs @ q[a : a + step].T  # (sample, queries)
        for j, i in enumerate(members[a : a + step]):
            keep = base
            if excluded[i]:
                gone = np.fromiter(excluded[i], np.int64, len(excluded[i]))
                keep = base & ~np.isin(sample_pks, gone)
            hit_pks = [pk for pk, _ in ranked[i]]
            inside = np.isin(hit_pks, sample_pks[keep]).tolist()
            scores_i = [s for _, s in ranked[i]]
            yield i, (ranked[i], _percentile_values(scores_i, inside, reference[keep, j]))


def _percentiles(
    hits: list[Hit],
    ranked: list[tuple[int, float]],
    reference: np.ndarray,
    members: set[int] | None,
) -> None:
    """Each hit's share (%) of the other reference regions that are less similar to the
    query; left None when fewer than 10 reference regions would make it meaningless."""
    # the hit itself does not count (members None: every hit is a reference region)
    inside = [members is None or pk in members for pk, _ in ranked]
    values = _percentile_values([h.score for h in hits], inside, reference)
    for h, p in zip(hits, values, strict=True):
        h.percentile = p


def _percentile_values(
    scores: Sequence[float], inside: Sequence[bool], reference: np.ndarray
) -> list[float | None]:
    """The percentile of each score among the ``reference`` scores (unsorted); ``inside``:
    the scored region is itself a reference region, which does not count."""
    thresholds = np.asarray(scores, dtype=np.float64) - 1e-6
    reference = np.asarray(reference, dtype=np.float64)
    if len(thresholds) <= 16:  # a few hits: count, no sort of the whole reference
        below = np.count_nonzero(reference[:, None] < thresholds[None, :], axis=0)
    else:
        below = np.searchsorted(np.sort(reference), thresholds, side="left")
    out: list[float | None] = []
    for b, self_counted in zip(below.tolist(), inside, strict=True):
        others = len(reference) - (1 if self_counted else 0)
        out.append(None if others < 10 else round(min(100.0, 100.0 * b / others), 1))
    return out


def _hits(
    session: Session,
    ranked: list[tuple[int, float]],
    mv: int,
    with_geometry: bool,
    with_attention: bool,
) -> list[Hit]:
    if not ranked:
        return []
    rows = _hit_rows(session, [p for p, _ in ranked], mv, with_geometry, with_attention)
    return _make_hits(ranked, rows)


def _hit_rows(
    session: Session, pks: Sequence[int], mv: int, with_geometry: bool, with_attention: bool
) -> dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]]:
    """pk -> (region id, city, centroid, GeoJSON geometry or None, attention or None) of the
    given regions, read in chunks."""
    cols: list[Any] = [
        Region.id,
        Region.region_id,
        City.name,
        func.ST_X(Region.centroid),
        func.ST_Y(Region.centroid),
    ]
    if with_geometry:
        cols.append(func.ST_AsGeoJSON(Region.geom))
    out: dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]] = {}
    for chunk in chunked(sorted(set(pks))):
        attention: dict[int, Any] = {}
        if with_attention:
            attention = dict(
                session.execute(
                    select(Embedding.region_pk, Embedding.attention).where(
                        Embedding.model_version_id == mv,
                        Embedding.kind == "fused",
                        Embedding.region_pk.in_(chunk),
                    )
                ).all()
            )
        for r in session.execute(
            select(*cols).join(City, City.id == Region.city_id).where(Region.id.in_(chunk))
        ).all():
            out[r[0]] = (
                r[1],
                r[2],
                (float(r[3]), float(r[4])),
                json.loads(r[5]) if with_geometry else None,
                attention.get(r[0]) if with_attention else None,
            )
    return out


def _make_hits(
    ranked: list[tuple[int, float]],
    rows: dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]],
) -> list[Hit]:
    out = []
    for rank, (pk, score) in enumerate(ranked, start=1):
        region_id, city, centroid, geometry, attention = rows[pk]
        out.append(Hit(rank, region_id, city, float(score), centroid, geometry, attention))
    return out
