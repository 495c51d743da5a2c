"""Similar regions: to a region or a point (GET), to a vector (POST), to many of either
(POST .../batch). The filters are passed through as given: the search checks them and
names the bad one (a 422 through :mod:`musecl_store.server.errors`)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query

from musecl_store.api import Store
from musecl_store.server.deps import CityName, FilterParams, ModelVersion, StoreDep
from musecl_store.server.errors import ApiError
from musecl_store.server.schemas import (
    MAX_K,
    BatchQuery,
    Kind,
    SimilarBatchOut,
    SimilarOut,
    VectorQuery,
)

router = APIRouter()


def _hits(store: Store, city: str, query: dict[str, Any], kind: str, **search: Any) -> Any:
    hits = store.search(city, kind=kind, **search)
    return {"city": city, "query": query, "kind": kind, "hits": [h.to_dict() for h in hits]}


@router.get(
    "/cities/{city}/similar",
    response_model=SimilarOut,
    summary="The k regions most similar to a region (by id) or to the region at a point",
)
def similar(
    store: StoreDep,
    city: CityName,
    *,
    region: Annotated[str | None, Query(max_length=200, description="A region id")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    filters: FilterParams,
    geometry: bool = False,
    attention: bool = False,
    kind: Kind = "fused",
    model_version: ModelVersion = None,
) -> Any:
    point = None
    if (lon is None) != (lat is None):
        raise ApiError(422, "give both lon and lat", "lat" if lat is None else "lon")
    if lon is not None and lat is not None:
        point = (lon, lat)
    if (region is None) == (point is None):
        raise ApiError(422, "give a region or a point (lon and lat), one of them", "region")
    query = {"region": region} if region is not None else {"point": [lon, lat]}
    shown = {"geometry": geometry, "attention": attention}
    return _hits(
        store,
        city,
        query,
        kind,
        region=region,
        point=point,
        k=k,
        model_version=model_version,
        **shown,
        **filters.model_dump(),
    )


@router.post(
    "/cities/{city}/similar",
    response_model=SimilarOut,
    summary="The k regions most similar to a vector (same dimension as the embeddings)",
)
def similar_to_vector(store: StoreDep, city: CityName, body: VectorQuery) -> Any:
    if not all(math.isfinite(v) for v in body.vector):
        raise ApiError(422, "the vector must be finite", "vector")
    query = {"vector": len(body.vector)}
    return _hits(store, city, query, body.kind, **body.model_dump(exclude={"kind"}))


@router.post(
    "/cities/{city}/similar/batch",
    response_model=SimilarBatchOut,
    summary="The k regions most similar to each of many regions, points or vectors",
)
def similar_batch(store: StoreDep, city: CityName, body: BatchQuery) -> Any:
    given = [n for n in ("regions", "points", "vectors") if getattr(body, n) is not None]
    if len(given) != 1:
        raise ApiError(
            422, "give one of regions, points or vectors", given[1] if given else "regions"
        )
    answers = store.search_many(
        city,
        body.regions,
        body.points,  # type: ignore[arg-type]  # each one checked: a bad one, its error
        body.vectors,
        show_progress=False,
        **body.model_dump(exclude={"regions", "points", "vectors"}),
    )
    return {"city": city, "kind": body.kind, "answers": [a.to_dict() for a in answers]}
