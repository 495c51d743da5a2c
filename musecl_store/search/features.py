"""Feature lookup for downstream models: embeddings by region id or by point, in bulk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h3
import numpy as np
import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store import geo
from musecl_store.errors import MuseclError
from musecl_store.store import dialect
from musecl_store.store import vectors as embeddings
from musecl_store.store.chunks import chunked, rows_in
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Embedding, Region
from musecl_store.store.vectors import load_embeddings
from musecl_store.store.versions import resolve as resolve_model_version


class FeatureError(MuseclError, LookupError):
    """Region ids that the city does not have."""


@dataclass
class FeatureTable:
    """One row per requested region or point; ``region_ids[i]`` is None for a point in no
    region (its row is NaN)."""

    region_ids: list[str | None]
    matrix: np.ndarray
    model_version: int
    kind: str

    def to_frame(self) -> Any:
        """A pandas DataFrame: ``region_id`` then ``e0 .. e{d-1}``."""
        import pandas as pd

        frame = pd.DataFrame(self.matrix, columns=[f"e{i}" for i in range(self.matrix.shape[1])])
        frame.insert(0, "region_id", self.region_ids)
        return frame


def lookup(
    session: Session,
    city: str,
    *,
    kind: str = "fused",
    model_version: int | None = None,
    region_ids: Sequence[str] | None = None,
    points: Sequence[tuple[float, float]] | None = None,
) -> FeatureTable:
    """Embeddings of the given regions (all when neither ids nor points are given), or of the
    regions containing the given lon/lat points. One bulk read either way.

    Raises:
        FeatureError: unknown region ids (listed).
    """
    c = get_city(session, city)
    mv = resolve_model_version(session, city, model_version)
    if points is None and region_ids is None:  # the whole city: one bulk read
        ids, mat = load_embeddings(session, mv, kind, c.id)
        return FeatureTable(list(ids), mat, mv, kind)
    wanted: list[str | None]
    if points is not None:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        wanted = locate(session, c.id, pts[:, 0], pts[:, 1])
    else:
        wanted = list(region_ids or [])
    found = vectors_of(session, mv, kind, c.id, [r for r in wanted if r is not None])
    if points is None:
        missing = [r for r in wanted if r not in found]
        if missing:
            raise FeatureError(
                f"{len(missing)} region id(s) have no {kind} embedding in model "
                f"version {mv} of city {city!r}: {', '.join(map(str, missing[:5]))}"
            )
    dim = next((len(v) for v in found.values()), _dim(session, mv, kind))
    out = np.full((len(wanted), dim), np.nan, dtype=np.float32)
    for i, r in enumerate(wanted):
        if r is not None and r in found:
            out[i] = found[r]
    return FeatureTable(wanted, out, mv, kind)


def _dim(session: Session, mv: int, kind: str) -> int:
    return int(
        session.scalar(
            select(Embedding.dim)
            .where(Embedding.model_version_id == mv, Embedding.kind == kind)
            .limit(1)
        )
        or 0
    )


def vectors_of(
    session: Session, mv: int, kind: str, city_id: int, region_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """region id -> vector of the given regions that have one, read in chunks: memory and
    time follow the number asked for, not the size of the city."""
    name = dialect.name(session)
    unique = sorted(set(region_ids))
    out: dict[str, np.ndarray] = {}
    for chunk in chunked(unique):
        rows = session.execute(
            select(Region.region_id, Embedding.dim, dialect.vector_wire(Embedding.vector, name))
            .join(Region, Region.id == Embedding.region_pk)
            .where(
                Embedding.model_version_id == mv,
                Embedding.kind == kind,
                Region.city_id == city_id,
                Region.region_id.in_(chunk),
            )
        ).all()
        if rows:
            mat = dialect.decode_vectors([r[2] for r in rows], int(rows[0][1]), name)
            out.update(zip((r[0] for r in rows), mat, strict=True))
    return out


def locate(session: Session, city_id: int, lon: np.ndarray, lat: np.ndarray) -> list[str | None]:
    """The id of the region containing each point (None for none).

    A city of H3 cells is looked up by cell id, in chunks through an index: memory and time
    follow the number of points. Other polygons stream by region id in batches of
    :data:`~musecl_store.store.vectors.CHUNK_ROWS`, each through an STR-tree, until every point
    is found: time follows the city, memory the batch. A point on a shared border goes to
    the region with the smallest id (the first batch and the first region that holds it)."""
    with_cell = session.execute(
        select(Region.h3_cell)
        .where(Region.city_id == city_id, Region.h3_cell.is_not(None))
        .limit(1)
    ).scalar()
    all_h3 = (
        with_cell is not None
        and not session.execute(
            select(Region.id).where(Region.city_id == city_id, Region.h3_cell.is_(None)).limit(1)
        ).first()
    )
    out: list[str | None] = [None] * len(lon)
    ok = np.flatnonzero(geo.lonlat_ok(lon, lat))
    if all_h3:
        res = h3.get_resolution(with_cell)
        cells = [
            h3.latlng_to_cell(la, lo, res)
            for lo, la in zip(lon[ok].tolist(), lat[ok].tolist(), strict=True)
        ]
        unique = sorted(set(cells))
        region_of: dict[str, str] = {}
        rows = rows_in(
            session,
            select(Region.h3_cell, Region.region_id).where(Region.city_id == city_id),
            Region.h3_cell,
            unique,
        )
        region_of.update((str(c), r) for c, r in rows)
        for i, cell in zip(ok.tolist(), cells, strict=True):
            out[i] = region_of.get(cell)
        return out
    result = session.execute(
        select(Region.region_id, Region.geom)
        .where(Region.city_id == city_id)
        .order_by(Region.region_id)
        .execution_options(yield_per=embeddings.CHUNK_ROWS)
    )
    try:
        for part in result.partitions():
            if not ok.size:  # every point found
                break
            shapes = shapely.from_wkb([r.geom.data for r in part])
            found = geo.RegionLocator(shapes).locate(lon[ok], lat[ok])
            hit = found >= 0
            for i, j in zip(ok[hit].tolist(), found[hit].tolist(), strict=True):
                out[i] = part[j].region_id
            ok = ok[~hit]
    finally:
        result.close()
    return out
