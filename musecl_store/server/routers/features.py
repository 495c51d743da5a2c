"""Embeddings for downstream models: by region ids (GET, default all) or by ids or lon/lat
points in a body (POST), as JSON rows or CSV."""

from __future__ import annotations

import io
import math
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from musecl_store.api import Store
from musecl_store.geo import coordinates
from musecl_store.server.deps import CityName, ModelVersion, StoreDep
from musecl_store.server.errors import ApiError
from musecl_store.server.schemas import MAX_IDS, FeaturesOut, FeaturesQuery, Kind

router = APIRouter()

LonLat = tuple[float, float]
Format = Literal["json", "csv"]
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": FeaturesOut, "content": {"text/csv": {}}}
}


def _points(points: list[list[float]]) -> list[LonLat]:
    try:
        return [cast(LonLat, coordinates(p, "LON,LAT")) for p in points]
    except ValueError as exc:
        raise ApiError(422, str(exc), "points") from exc


def _features(
    store: Store,
    city: str,
    ids: list[str] | None,
    points: list[list[float]] | None,
    kind: str,
    model_version: int | None,
    fmt: str,
) -> Response:
    if ids is not None and points is not None:
        raise ApiError(422, "give ids or points, not both", "points")
    pts = None if points is None else _points(points)
    frame = store.features(city, ids, points=pts, kind=kind, model_version=model_version)
    if fmt == "csv":
        buf = io.StringIO()
        frame.to_csv(buf, index=False, float_format="%.7g")
        return Response(buf.getvalue(), media_type="text/csv")
    vec_cols = [c for c in frame.columns if c.startswith("e") and c[1:].isdigit()]
    rows = []
    for rec, vec in zip(frame.to_dict("records"), frame[vec_cols].to_numpy(), strict=True):
        row: dict[str, Any] = {"region_id": rec["region_id"]}
        if pts is not None:
            row["lon"], row["lat"] = rec["lon"], rec["lat"]
        ok = rec["region_id"] is not None and bool(all(math.isfinite(x) for x in vec))
        row["vector"] = [round(float(x), 7) for x in vec] if ok else None
        if not ok:
            row["region_id"] = None
        rows.append(row)
    body = {"city": city, "kind": kind, "dim": len(vec_cols), "rows": rows}
    return JSONResponse(body)


def _wanted(store: Store, city: str, ids: str | None) -> list[str] | None:
    """The ids of ``id,id,...``; without ids, none (all regions) if the city has few enough."""
    if ids is not None:
        wanted = [i.strip() for i in ids.split(",") if i.strip()]
        if len(wanted) > MAX_IDS:
            raise ApiError(422, f"at most {MAX_IDS} ids per request", "ids")
        return wanted
    cities = store.cities()
    n = cities.loc[cities.city == city, "regions"]
    if len(n) and int(n.iloc[0]) > MAX_IDS:
        raise ApiError(
            422,
            f"city {city!r} has {int(n.iloc[0])} regions: ask for at most {MAX_IDS} "
            "ids per request, or use `musecl export`",
            "ids",
        )
    return None


@router.get(
    "/cities/{city}/features",
    summary="Embeddings for downstream models by region id (default: all regions)",
    responses=RESPONSES,
)
def features_get(
    store: StoreDep,
    city: CityName,
    ids: Annotated[
        str | None, Query(max_length=MAX_IDS * 40, description="id,id,... (max 10,000)")
    ] = None,
    kind: Kind = "fused",
    model_version: ModelVersion = None,
    format: Format = "json",
) -> Response:
    wanted = _wanted(store, city, ids)
    return _features(store, city, wanted, None, kind, model_version, format)


@router.post(
    "/cities/{city}/features",
    summary="Embeddings in bulk: by region ids or by the regions containing lon/lat points",
    responses=RESPONSES,
)
def features_post(
    store: StoreDep, city: CityName, body: FeaturesQuery, format: Format = "json"
) -> Response:
    return _features(store, city, body.ids, body.points, body.kind, body.model_version, format)
