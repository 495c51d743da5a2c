"""A city's regions as GeoJSON: all of them with one value each for a map, or one region
with its indicators."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from musecl_store.exports.maps import MapError
from musecl_store.server.deps import CityName, RegionId, StoreDep
from musecl_store.server.errors import ApiError

router = APIRouter()

GEOJSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/geo+json": {}}}}


@router.get(
    "/cities/{city}/regions",
    summary="The city's regions as GeoJSON, with one value each for a map",
    responses=GEOJSON,
)
def regions(
    store: StoreDep,
    city: CityName,
    indicator: Annotated[str | None, Query(max_length=200)] = None,
    prediction: Annotated[str | None, Query(max_length=200, description="A regressor id")] = None,
) -> Response:
    if indicator is not None and prediction is not None:
        raise ApiError(400, "give indicator or prediction, not both", "prediction")
    frame = store.regions(city)
    values: dict[str, float] = {}
    if indicator is not None or prediction is not None:
        try:
            values = store.map_values(city, indicator=indicator, prediction=prediction)
        except MapError as exc:  # nothing of that name for the city
            raise ApiError(404, str(exc), "indicator" if indicator else "prediction") from exc
    features = []
    for rid, lon, lat, geom in zip(
        frame.region_id, frame.lon, frame.lat, frame.geometry, strict=True
    ):
        value = values.get(rid)
        features.append(
            {
                "type": "Feature",
                "id": rid,
                "geometry": geom.__geo_interface__,
                "properties": {
                    "region_id": rid,
                    "centroid": [lon, lat],
                    "value": None if value is None or not math.isfinite(value) else value,
                },
            }
        )
    body = {"type": "FeatureCollection", "features": features}
    return Response(json.dumps(body), media_type="application/geo+json")


@router.get(
    "/cities/{city}/regions/{region_id}",
    summary="One region as a GeoJSON feature, with its indicators",
    responses=GEOJSON,
)
def region(store: StoreDep, city: CityName, region_id: RegionId) -> Response:
    match = store.regions(city, ids=[region_id], indicators=True)
    if match.empty:
        raise ApiError(404, f"city {city!r} has no region {region_id!r}", "region_id")
    row = match.iloc[0]
    props = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in row.drop(labels=["geometry"]).items()
    }
    body = {
        "type": "Feature",
        "id": region_id,
        "geometry": row.geometry.__geo_interface__,
        "properties": props,
    }
    return Response(json.dumps(body, default=str), media_type="application/geo+json")
