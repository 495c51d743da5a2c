"""Many queries at once (:func:`similar_many`): the answers of :func:`.query.similar` for
every query, found together: one index check, bulk lookups of the query regions and
points, and one batched search or matrix product per block of queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store import geo
from musecl_store.progress import progress
from musecl_store.search.features import locate
from musecl_store.search.filters import Filters, SearchError, numbers
from musecl_store.search.hits import Hit, hit_rows, make_hits, percentile_values
from musecl_store.search.index import RegionIndex
from musecl_store.search.query import (
    adjacent_many,
    candidates,
    check_k,
    query_vector,
    region_at,
    unit_vector,
)
from musecl_store.store.chunks import chunked
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Region
from musecl_store.text import storable

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
    check_k(k)
    batch = _Batch.of(session, index, queries, filters)
    live = [i for i in range(batch.n) if batch.errors[i] is None]
    excluded: dict[int, set[int]] = {
        i: set() if (filters.include_self or batch.pks[i] < 0) else {int(batch.pks[i])}
        for i in live
    }
    if filters.exclude_adjacent:
        adjacent = adjacent_many(session, [int(batch.pks[i]) for i in live])
        for i in live:
            excluded[i] |= set(adjacent[int(batch.pks[i])].tolist())
    ranker = _BlockRanker(
        session,
        index,
        batch,
        filters,
        excluded,
        k,
        brute_force_limit,
        with_geometry,
        with_attention,
    )

    def answered() -> Iterator[tuple[int, Answer]]:
        for a in range(0, len(live), _BLOCK):
            yield from ranker.rank(live[a : a + _BLOCK])

    answers = [Answer(batch.labels[i], [], batch.errors[i]) for i in range(batch.n)]
    for i, answer in progress(
        answered(), desc="similar", total=len(live), enabled=show_progress, unit="query"
    ):
        answers[i] = answer
    return answers


@dataclass
class _Batch:
    """The queries of :func:`similar_many`, one slot each: label, error (or None), query
    region pk (-1 for a vector), how messages name it, unit vector, city id (-1: none)."""

    labels: list[str | int]
    errors: list[str | None]
    pks: np.ndarray
    whats: list[str]
    vecs: np.ndarray
    city_of: np.ndarray

    @property
    def n(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, session: Session, index: RegionIndex, queries: Queries, filters: Filters) -> _Batch:
        """Every query found (regions and points in bulk) and its vector read, the index
        brought up to date once for the batch; a query that cannot be answered gets its
        error."""
        mv, kind = index.stamp.model_version, index.stamp.kind
        city_filter = filters.same_city or filters.other_cities
        items = queries.items()
        n = len(items)
        batch = cls(
            labels=[queries.label(i, item) for i, item in enumerate(items)],
            errors=[None] * n,
            pks=np.full(n, -1, dtype=np.int64),
            whats=[""] * n,
            vecs=np.zeros((n, index.stamp.dim), dtype=np.float32),
            city_of=np.full(n, -1, dtype=np.int64),
        )
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
                    batch.errors[i] = str(exc)
        elif queries.region_ids is not None:
            if queries.city is None:
                raise SearchError("a region id needs its city")
            _find_regions(session, queries.city, items, batch.pks, batch.whats, batch.errors)
        else:
            _find_points(session, queries.city, items, batch.pks, batch.whats, batch.errors)
        index.refresh(session)  # once for the batch: the index must agree with the database
        if queries.vectors is None:
            _region_vectors(
                session, index, batch.pks, batch.whats, batch.errors, batch.vecs, batch.city_of
            )
            return batch
        if city_filter:
            assert queries.city is not None
            batch.city_of[:] = get_city(session, queries.city).id
        dim = index.stamp.dim
        for i, r in enumerate(raw):
            if r is not None and r.shape[0] != dim:
                batch.errors[i] = (
                    f"the query vector has {r.shape[0]} values; the {kind} vectors of model "
                    f"version {mv} have {dim}"
                )
            elif r is not None:
                batch.vecs[i] = unit_vector(r)
        return batch


@dataclass
class _BlockRanker:
    """Ranks blocks of a batch's live queries: grouped by query city when a city filter
    applies, each group scored over its filtered candidates or searched in the index."""

    session: Session
    index: RegionIndex
    batch: _Batch
    filters: Filters
    excluded: dict[int, set[int]]
    k: int
    brute_force_limit: int
    with_geometry: bool
    with_attention: bool
    allowed: dict[int, np.ndarray | None] = field(default_factory=dict)  # by city; -1: all

    def rank(self, block: list[int]) -> Iterator[tuple[int, Answer]]:
        mv, kind = self.index.stamp.model_version, self.index.stamp.kind
        city_filter = self.filters.same_city or self.filters.other_cities
        groups: dict[int, list[int]] = defaultdict(list)
        for i in block:
            groups[int(self.batch.city_of[i]) if city_filter else -1].append(i)
        ranked: dict[int, tuple[list[tuple[int, float]], list[float | None]]] = {}
        vecs = self.batch.vecs
        for key, members in groups.items():
            if key not in self.allowed:
                self.allowed[key] = candidates(
                    self.session, mv, kind, self.filters, None if key < 0 else key
                )
            cand = self.allowed[key]
            if cand is not None and len(cand) <= self.brute_force_limit:
                ranked.update(_scored_many(self.index, cand, members, vecs, self.excluded, self.k))
            else:
                ranked.update(
                    _searched_many(self.index, cand, members, vecs, self.excluded, self.k)
                )
        hit_pks = [pk for r, _ in ranked.values() for pk, _ in r]
        rows = hit_rows(self.session, hit_pks, mv, self.with_geometry, self.with_attention)
        for i in block:
            hits = make_hits(ranked[i][0], rows)
            for h, p in zip(hits, ranked[i][1], strict=True):
                h.percentile = p
            yield i, Answer(self.batch.labels[i], hits)


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
            yield i, (ranked, percentile_values([s for _, s in ranked], [True] * len(ranked), sc))


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
            yield i, (ranked[i], percentile_values(scores_i, inside, reference[keep, j]))
