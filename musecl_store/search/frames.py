"""Search answers as pandas frames (GeoDataFrames with ``geometry``), for the Python API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import pandas as pd
import shapely.geometry

from musecl_store.search.hits import Hit


def hits_frame(
    rows: Sequence[tuple[str | int | None, Hit | None, str | None]],
    geometry: bool,
    *,
    with_query: bool = False,
) -> pd.DataFrame:
    """The frame of :meth:`~musecl_store.api.Store.similar` (and, ``with_query``, of
    :meth:`~musecl_store.api.Store.similar_many`: a ``query`` column first, an ``error``
    column last) from (query, hit or None, error) rows."""

    cols = ["rank", "region_id", "city", "score", "percentile", "lon", "lat"]
    records = []
    for query, h, error in rows:
        row: dict[str, Any] = {"query": query} if with_query else {}
        if h is not None:
            row.update(
                rank=h.rank,
                region_id=h.region_id,
                city=h.city,
                score=h.score,
                percentile=h.percentile,
                lon=h.centroid[0],
                lat=h.centroid[1],
            )
            for branch, w in (h.attention or {}).items():
                row[f"attention:{branch}"] = w
        if with_query:
            row["error"] = error
        records.append(row)
    if with_query:
        cols = ["query", *cols]
        branches = sorted({c for r in records for c in r if c.startswith("attention:")})
        frame = pd.DataFrame(records, columns=[*cols, *branches, "error"])
        frame["rank"] = frame["rank"].astype("Int64")
    else:
        frame = pd.DataFrame(records, columns=cols if not records else None)
    if not geometry:
        return frame
    shapes = [
        None if h is None or h.geometry is None else shapely.geometry.shape(h.geometry)
        for _, h, _ in rows
    ]
    return gpd.GeoDataFrame(frame, geometry=shapes, crs="EPSG:4326")
