"""A city's regions as a GeoDataFrame, with their indicators and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from geoalchemy2.shape import to_shape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store.geo import area_km2
from musecl_store.store.chunks import rows_in
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Indicator, Prediction, Region


def regions_frame(
    session: Session,
    city: str,
    ids: Sequence[str] | None = None,
    *,
    indicators: bool = False,
    predictions: bool = False,
) -> gpd.GeoDataFrame:
    """The regions of :meth:`musecl_store.api.Store.regions` (its docstring says what the
    columns are)."""
    c = get_city(session, city)
    stmt = select(
        Region.id,
        Region.region_id,
        Region.h3_cell,
        func.ST_X(Region.centroid),
        func.ST_Y(Region.centroid),
        Region.geom,
    ).where(Region.city_id == c.id)
    if ids is None:
        rows = list(session.execute(stmt).all())
    else:
        rows = rows_in(session, stmt, Region.region_id, sorted({str(i) for i in ids}))
    rows.sort(key=lambda r: r[1])
    geoms = [to_shape(r[5]) for r in rows]
    frame = pd.DataFrame(
        {
            "region_id": [r[1] for r in rows],
            "h3_cell": [r[2] for r in rows],
            "lon": [float(r[3]) for r in rows],
            "lat": [float(r[4]) for r in rows],
            "area_km2": [round(area_km2(g), 6) for g in geoms],
        }
    )
    pk_row = {r[0]: i for i, r in enumerate(rows)}
    if indicators:
        _indicator_columns(session, c.id, ids is not None, pk_row, frame)
    if predictions:
        _prediction_columns(session, c.id, ids is not None, pk_row, frame)
    return gpd.GeoDataFrame(frame, geometry=geoms, crs="EPSG:4326")


def _of_regions(
    session: Session, stmt: Any, column: Any, city_id: int, some: bool, pks: Sequence[int]
) -> list[Any]:
    """Rows of ``stmt`` about the city's regions: all of them, or (``some``) those ``pks``."""
    if not some:
        return list(
            session.execute(
                stmt.join(Region, Region.id == column).where(Region.city_id == city_id)
            ).all()
        )
    return rows_in(session, stmt, column, sorted(pks))


def _indicator_columns(
    session: Session, city_id: int, some: bool, pk_row: dict[int, int], frame: pd.DataFrame
) -> None:
    """One column per indicator (``indicator:<name>`` where the name is already taken)."""
    stmt = select(Indicator.region_pk, Indicator.name, Indicator.value)
    values = _of_regions(session, stmt, Indicator.region_pk, city_id, some, list(pk_row))
    taken = {*frame.columns, "geometry"}
    column = {n: f"indicator:{n}" if n in taken else n for n in {v[1] for v in values}}
    for name in sorted(column):
        frame[column[name]] = np.nan
    for pk, name, value in values:
        frame.at[pk_row[pk], column[name]] = value


def _prediction_columns(
    session: Session, city_id: int, some: bool, pk_row: dict[int, int], frame: pd.DataFrame
) -> None:
    """One column ``predicted:<indicator>`` per predicted indicator, the newest regressor's."""
    stmt = select(Prediction.region_pk, Prediction.indicator, Prediction.value).order_by(
        Prediction.id
    )
    preds = _of_regions(session, stmt, Prediction.region_pk, city_id, some, list(pk_row))
    for pk, name, value in preds:  # newest last (per region, also across chunks): it wins
        col = f"predicted:{name}"
        if col not in frame:
            frame[col] = np.nan
        frame.at[pk_row[pk], col] = value
