"""Feature lookup for downstream models: embeddings by region id or by point, in bulk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from geoalchemy2.shape import to_shape
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store import geo
from musecl_store.embeddings import load_embeddings
from musecl_store.errors import MuseclError
from musecl_store.models import active_model_version
from musecl_store.summary import get_city
from musecl_store.tables import Region


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
    mv = model_version if model_version is not None else active_model_version(session, city)
    ids, mat = load_embeddings(session, mv, kind, c.id)
    row = {r: i for i, r in enumerate(ids)}
    if points is not None:
        regions = session.execute(
            select(Region.region_id, Region.geom, Region.h3_cell)
            .where(Region.city_id == c.id)
            .order_by(Region.region_id)
        ).all()
        h3_cells = [r.h3_cell for r in regions] if all(r.h3_cell for r in regions) else None
        locator = geo.RegionLocator([to_shape(r.geom) for r in regions], h3_cells)
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        found = locator.locate(pts[:, 0], pts[:, 1])
        wanted: list[str | None] = [regions[i].region_id if i >= 0 else None for i in found]
    elif region_ids is not None:
        missing = [r for r in region_ids if r not in row]
        if missing:
            raise FeatureError(
                f"{len(missing)} region id(s) have no {kind} embedding in model "
                f"version {mv} of city {city!r}: {', '.join(missing[:5])}"
            )
        wanted = list(region_ids)
    else:
        wanted = list(ids)
    out = np.full((len(wanted), mat.shape[1] if mat.size else 0), np.nan, dtype=np.float32)
    for i, r in enumerate(wanted):
        if r is not None and r in row:
            out[i] = mat[row[r]]
    return FeatureTable(wanted, out, mv, kind)
