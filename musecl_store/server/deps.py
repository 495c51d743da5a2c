"""What routes share: the store and the server's options (read from ``app.state``), the
write guard, and the parameter types used by several routes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader

from musecl_store.api import Store
from musecl_store.server.errors import ApiError
from musecl_store.server.schemas import MAX_INT32, FilterQuery


@dataclass(frozen=True)
class ServerOptions:
    """How :func:`musecl_store.server.app.create_app` was asked to serve."""

    allow_writes: bool
    api_key: str | None
    bundle_root: Path  # POST /api/ingest reads bundles under this folder only
    tiles: str | None  # the map's XYZ tile URL template


def get_store(request: Request) -> Store:
    return cast(Store, request.app.state.store)


def get_options(request: Request) -> ServerOptions:
    return cast(ServerOptions, request.app.state.options)


StoreDep = Annotated[Store, Depends(get_store)]
OptionsDep = Annotated[ServerOptions, Depends(get_options)]

KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)


def writer(options: OptionsDep, key: Annotated[str | None, Depends(KEY_HEADER)]) -> None:
    """Let a write through only when writes are allowed and the API key is right."""
    if not options.allow_writes:
        raise ApiError(403, "writes are disabled; start the server with --allow-writes")
    assert options.api_key is not None
    if key is None or not hmac.compare_digest(key.encode(), options.api_key.encode()):
        raise ApiError(401, "a missing or wrong API key (header X-API-Key)", "X-API-Key")


CityName = Annotated[str, PathParam(min_length=1, max_length=200)]
RegionId = Annotated[str, PathParam(min_length=1, max_length=200)]
ModelVersion = Annotated[int | None, Query(ge=1, le=MAX_INT32)]
FilterParams = Annotated[FilterQuery, Query()]  # bbox, near ...: one query parameter each
