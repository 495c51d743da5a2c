"""``musecl serve``: the store over HTTP (FastAPI on uvicorn) and a map explorer page.

Every endpoint is a thin layer over :class:`musecl_store.api.Store`. The OpenAPI spec is at
``/openapi.json`` (and browsable at ``/docs``). Read-only unless started with writes
allowed and an API key; every bad request is a 4xx JSON ``{"error", "parameter"}``, never a
traceback.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import faiss
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from musecl_store import __version__
from musecl_store.api import KINDS, Store
from musecl_store.errors import InputError, MuseclError
from musecl_store.exports.maps import MapError
from musecl_store.geo import coordinates

log = logging.getLogger("musecl.server")

STATIC = Path(__file__).parent.parent / "static"
MAX_K = 1000
MAX_IDS = 10_000
MAX_BODY = 2_000_000  # bytes
MAX_VECTOR = 4096

Kind = Literal["fused", "remote", "street", "poi"]
LonLat = tuple[float, float]
CityName = Annotated[str, PathParam(min_length=1, max_length=200)]
RegionId = Annotated[str, PathParam(min_length=1, max_length=200)]
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
assert set(KINDS) == {"fused", "remote", "street", "poi"}


# ---------------------------------------------------------------------------- models


class ErrorOut(BaseModel):
    error: str = Field(description="What is wrong, in words.")
    parameter: str | None = Field(None, description="The parameter at fault, when one is.")


class CityOut(BaseModel):
    city: str
    regions: int
    revision: int
    crs: str
    h3_resolution: int | None = None
    source: str | None = None
    updated_at: str | None = None


class HitOut(BaseModel):
    rank: int
    region_id: str
    city: str
    score: float = Field(description="Cosine of the two regions' embeddings (1 = same).")
    percentile: float | None = Field(
        None, description="Share (%) of the other candidate regions less similar to the query."
    )
    centroid: list[float] = Field(description="[lon, lat]")
    geometry: dict[str, Any] | None = None
    attention: dict[str, float] | None = Field(
        None, description="The region's fusion attention per modality: why it is like it is."
    )


class SimilarOut(BaseModel):
    city: str
    query: dict[str, Any]
    kind: str
    hits: list[HitOut]


class Filters(BaseModel):
    """Which regions may be answers (all given conditions hold)."""

    bbox: list[float] | None = Field(
        None, min_length=4, max_length=4, description="[minlon, minlat, maxlon, maxlat]"
    )
    near: list[float] | None = Field(None, min_length=3, max_length=3, description="[lon, lat, km]")
    polygon: str | None = Field(None, max_length=100_000, description="WKT or GeoJSON")
    same_city: bool = False
    other_cities: bool = False
    exclude_adjacent: bool = False


class SearchParams(Filters):
    """The filters, k, the embedding and what each hit includes."""

    k: int = Field(10, ge=1, le=MAX_K)
    kind: Kind = "fused"
    model_version: int | None = Field(None, ge=1, le=2**31 - 1)
    geometry: bool = False
    attention: bool = False


class VectorQuery(SearchParams):
    vector: list[float] = Field(min_length=1, max_length=MAX_VECTOR)


class BatchQuery(SearchParams):
    """Many queries of one kind: region ids, lon/lat points or vectors (exactly one)."""

    regions: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=MAX_IDS, description="Region ids of the city."
    )
    points: list[list[float]] | None = Field(
        None, max_length=MAX_IDS, description="[[lon, lat], ...]: the region containing each."
    )
    vectors: list[Annotated[list[float], Field(max_length=MAX_VECTOR)]] | None = Field(
        None, max_length=MAX_IDS, description="Vectors of the embeddings' dimension."
    )


class AnswerOut(BaseModel):
    query: str | int = Field(description="The region id, 'lon,lat', or the vector's index.")
    hits: list[HitOut]
    error: str | None = Field(
        None,
        description="Why this query has no answer (an unknown region, a point in no "
        "region, a bad vector); the other queries are answered.",
    )


class SimilarBatchOut(BaseModel):
    city: str
    kind: str
    answers: list[AnswerOut] = Field(description="One per query, in the order given.")


class FeaturesQuery(BaseModel):
    ids: list[str] | None = Field(None, max_length=MAX_IDS)
    points: list[list[float]] | None = Field(
        None, max_length=MAX_IDS, description="[[lon, lat], ...]"
    )
    kind: Kind = "fused"
    model_version: int | None = Field(None, ge=1, le=2**31 - 1)


class FeaturesOut(BaseModel):
    city: str
    kind: str
    dim: int
    rows: list[dict[str, Any]] = Field(
        description="{region_id, vector} per id or point (+ lon, lat for points); a point "
        "in no region has region_id and vector null."
    )


class IngestIn(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="A bundle folder on the server.")
    check: bool = False


class ReembedIn(BaseModel):
    regions: list[str] | None = Field(None, max_length=MAX_IDS)
    since: int | None = Field(None, ge=0, le=2**31 - 1)
    all_regions: bool = False
    model_version: int | None = Field(None, ge=1, le=2**31 - 1)


class LayersOut(BaseModel):
    indicators: list[str]
    predictions: list[dict[str, Any]]


# ---------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.parameter = status, message, parameter


def _error(status: int, message: str, parameter: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "parameter": parameter}, status_code=status)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A request the store cannot answer as asked."},
    404: {"model": ErrorOut, "description": "An unknown city, region, model or regressor."},
    413: {"model": ErrorOut, "description": "The request body is too large."},
    422: {"model": ErrorOut, "description": "A parameter of the wrong type or out of range."},
    503: {"model": ErrorOut, "description": "The database is unavailable."},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorOut, "description": "A missing or wrong API key."},
    403: {"model": ErrorOut, "description": "Writes are disabled on this server."},
}


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with a 413."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _error(413, f"the body is over {self.limit} bytes", "body")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_big(scope, receive, send)
            return
        # Read the whole body first (at most the limit), counting as it comes: a chunked
        # body without a length is held to the same limit.
        messages: list[Any] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await too_big(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------------------- app


def create_app(
    store: Store,
    *,
    allow_writes: bool = False,
    api_key: str | None = None,
    tiles: str | None = None,
    bundle_root: str | Path | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The HTTP API and the map page over ``store``.

    Args:
        allow_writes: enable ``POST /api/ingest`` and ``POST /api/cities/{city}/reembed``;
            they then need ``api_key`` in the ``X-API-Key`` header.
        tiles: an XYZ tile URL template for the map's background (none: a plain one).
        bundle_root: ``POST /api/ingest`` reads bundles under this folder only (default:
            the working directory).
    """
    if allow_writes and not api_key:
        raise InputError("writes need an API key (--api-key or MUSECL_API_KEY)")

    app = FastAPI(
        title="musecl-store",
        version=__version__,
        description="Region embeddings (MuseCL) of cities: similar regions, features, "
        "indicators and predictions. Errors are JSON {error, parameter}.",
    )
    # One FAISS thread per search: a server runs many searches at once, and OpenMP threads
    # spinning beside them made a 100k-vector query 7x slower on 2 cores.
    faiss.omp_set_num_threads(1)
    app.add_middleware(BodyLimit, limit=max_body)
    root = Path(bundle_root or Path.cwd()).expanduser().resolve()
    app.state.store = store

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.parameter)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        return _error(422, str(first.get("msg", "invalid request")), ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(MuseclError)
    async def _bad(_r: Request, exc: MuseclError) -> JSONResponse:
        return _error(404 if isinstance(exc, LookupError) else 400, str(exc))

    @app.exception_handler(ValueError)
    async def _value(_r: Request, exc: ValueError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(OperationalError)
    async def _db_down(_r: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return _error(503, "the database is unavailable; try again")

    @app.exception_handler(Exception)
    async def _bug(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the traceback stays in the server's log
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    api = APIRouter(prefix="/api", responses=ERRORS)

    @api.get("/health", summary="Liveness and the store's schema")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "database": store.shown_url}

    @api.get("/cities", response_model=list[CityOut], summary="The cities in the store")
    def cities() -> Any:
        return json.loads(store.cities().to_json(orient="records"))

    @api.get("/cities/{city}", summary="Counts of what the store holds for one city")
    def info(city: CityName) -> dict[str, Any]:
        return store.info(city)

    @api.get("/cities/{city}/layers", response_model=LayersOut, summary="What a map can show")
    def layers(city: CityName) -> Any:
        info = store.info(city)
        return {"indicators": sorted(info["indicators"]), "predictions": store.predicted(city)}

    @api.get(
        "/cities/{city}/regions",
        summary="The city's regions as GeoJSON, with one value each for a map",
        responses={200: {"content": {"application/geo+json": {}}}},
    )
    def regions(
        city: CityName,
        indicator: Annotated[str | None, Query(max_length=200)] = None,
        prediction: Annotated[
            str | None, Query(max_length=200, description="A regressor id")
        ] = None,
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

    @api.get(
        "/cities/{city}/regions/{region_id}",
        summary="One region as a GeoJSON feature, with its indicators",
        responses={200: {"content": {"application/geo+json": {}}}},
    )
    def region(city: CityName, region_id: RegionId) -> Response:
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

    def _hits(city: str, query: dict[str, Any], kind: str, **kw: Any) -> dict[str, Any]:
        hits = store.search(city, kind=kind, **kw)
        return {"city": city, "query": query, "kind": kind, "hits": [h.to_dict() for h in hits]}

    def _coordinates(
        value: str | Sequence[float] | None, names: str, parameter: str
    ) -> tuple[float, ...] | None:
        if value is None:
            return None
        try:
            return coordinates(value, names)
        except ValueError as exc:
            raise ApiError(422, str(exc), parameter) from exc

    @api.get(
        "/cities/{city}/similar",
        response_model=SimilarOut,
        summary="The k regions most similar to a region (by id) or to the region at a point",
    )
    def similar(
        city: CityName,
        region: Annotated[str | None, Query(max_length=200, description="A region id")] = None,
        lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
        lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        bbox: Annotated[
            str | None, Query(max_length=200, description="minlon,minlat,maxlon,maxlat")
        ] = None,
        near: Annotated[str | None, Query(max_length=200, description="lon,lat,km")] = None,
        polygon: Annotated[
            str | None, Query(max_length=20_000, description="WKT or GeoJSON")
        ] = None,
        same_city: bool = False,
        other_cities: bool = False,
        exclude_adjacent: bool = False,
        geometry: bool = False,
        attention: bool = False,
        kind: Kind = "fused",
        model_version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> Any:
        point = None
        if (lon is None) != (lat is None):
            raise ApiError(422, "give both lon and lat", "lat" if lat is None else "lon")
        if lon is not None and lat is not None:
            point = (lon, lat)
        if (region is None) == (point is None):
            raise ApiError(422, "give a region or a point (lon and lat), one of them", "region")
        box = _coordinates(bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "bbox")
        circle = _coordinates(near, "LON,LAT,KM", "near")
        query = {"region": region} if region is not None else {"point": [lon, lat]}
        return _hits(
            city,
            query,
            kind,
            region=region,
            point=point,
            k=k,
            bbox=box,
            near=circle,
            polygon=polygon,
            same_city=same_city,
            other_cities=other_cities,
            exclude_adjacent=exclude_adjacent,
            geometry=geometry,
            attention=attention,
            model_version=model_version,
        )

    @api.post(
        "/cities/{city}/similar",
        response_model=SimilarOut,
        summary="The k regions most similar to a vector (same dimension as the embeddings)",
    )
    def similar_to_vector(city: CityName, body: VectorQuery) -> Any:
        if not all(math.isfinite(v) for v in body.vector):
            raise ApiError(422, "the vector must be finite", "vector")
        _coordinates(body.bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "bbox")
        _coordinates(body.near, "LON,LAT,KM", "near")
        return _hits(
            city,
            {"vector": len(body.vector)},
            body.kind,
            **body.model_dump(exclude={"kind"}),
        )

    @api.post(
        "/cities/{city}/similar/batch",
        response_model=SimilarBatchOut,
        summary="The k regions most similar to each of many regions, points or vectors",
    )
    def similar_batch(city: CityName, body: BatchQuery) -> Any:
        given = [n for n in ("regions", "points", "vectors") if getattr(body, n) is not None]
        if len(given) != 1:
            raise ApiError(
                422, "give one of regions, points or vectors", given[1] if given else "regions"
            )
        _coordinates(body.bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "bbox")
        _coordinates(body.near, "LON,LAT,KM", "near")
        answers = store.search_many(
            city,
            body.regions,
            body.points,  # type: ignore[arg-type]  # each one checked: a bad one, its error
            body.vectors,
            show_progress=False,
            **body.model_dump(exclude={"regions", "points", "vectors"}),
        )
        return {"city": city, "kind": body.kind, "answers": [a.to_dict() for a in answers]}

    def _features(
        city: str,
        ids: list[str] | None,
        points: list[list[float]] | None,
        kind: str,
        model_version: int | None,
        fmt: str,
    ) -> Response:
        if ids is not None and points is not None:
            raise ApiError(422, "give ids or points, not both", "points")
        pts = None
        if points is not None:
            pts = [cast(LonLat, _coordinates(p, "LON,LAT", "points")) for p in points]
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

    feature_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": FeaturesOut, "content": {"text/csv": {}}}
    }

    @api.get(
        "/cities/{city}/features",
        summary="Embeddings for downstream models by region id (default: all regions)",
        responses=feature_responses,
    )
    def features_get(
        city: CityName,
        ids: Annotated[
            str | None, Query(max_length=MAX_IDS * 40, description="id,id,... (max 10,000)")
        ] = None,
        kind: Kind = "fused",
        model_version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        wanted = None
        if ids is not None:
            wanted = [i.strip() for i in ids.split(",") if i.strip()]
            if len(wanted) > MAX_IDS:
                raise ApiError(422, f"at most {MAX_IDS} ids per request", "ids")
        else:
            cities = store.cities()
            n = cities.loc[cities.city == city, "regions"]
            if len(n) and int(n.iloc[0]) > MAX_IDS:
                raise ApiError(
                    422,
                    f"city {city!r} has {int(n.iloc[0])} regions: ask for at most {MAX_IDS} "
                    "ids per request, or use `musecl export`",
                    "ids",
                )
        return _features(city, wanted, None, kind, model_version, format)

    @api.post(
        "/cities/{city}/features",
        summary="Embeddings in bulk: by region ids or by the regions containing lon/lat points",
        responses=feature_responses,
    )
    def features_post(
        city: CityName,
        body: FeaturesQuery,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        return _features(city, body.ids, body.points, body.kind, body.model_version, format)

    @api.get("/models", summary="Model versions with embedding counts and mean R²")
    def models(city: Annotated[str | None, Query(max_length=200)] = None) -> list[dict[str, Any]]:
        return store.models(city)

    @api.get("/regressors", summary="The fitted regressors and their cross-validated metrics")
    def regressors() -> list[dict[str, Any]]:
        return store.regressors()

    # ------------------------------------------------------------------ writes

    def writer(key: Annotated[str | None, Depends(KEY_HEADER)]) -> None:
        if not allow_writes:
            raise ApiError(403, "writes are disabled; start the server with --allow-writes")
        assert api_key is not None
        if key is None or not hmac.compare_digest(key.encode(), api_key.encode()):
            raise ApiError(401, "a missing or wrong API key (header X-API-Key)", "X-API-Key")

    @api.post(
        "/ingest",
        summary="Ingest a bundle folder on the server (needs --allow-writes and the API key)",
        responses=WRITE_ERRORS,
        dependencies=[Depends(writer)],
    )
    def ingest(body: IngestIn) -> dict[str, Any]:
        path = Path(body.path).expanduser().resolve()
        if not path.is_relative_to(root):
            raise ApiError(403, f"bundles must lie under {root} (--bundle-root)", "path")
        summary = store.ingest(path, check=body.check, show_progress=False)
        return {**summary.to_dict(), "checked_only": body.check}

    @api.post(
        "/cities/{city}/reembed",
        summary="Re-embed changed regions with the frozen model (needs writes and the API key)",
        responses=WRITE_ERRORS,
        dependencies=[Depends(writer)],
    )
    def reembed(city: CityName, body: ReembedIn) -> dict[str, Any]:
        return store.reembed(
            city,
            regions=body.regions,
            since=body.since,
            all_regions=body.all_regions,
            model_version=body.model_version,
            show_progress=False,
        )

    app.include_router(api)

    # ------------------------------------------------------------------ the map page

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/config.json", include_in_schema=False)
    def page_config() -> dict[str, Any]:
        return {"tiles": tiles, "writes": allow_writes, "version": __version__}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
