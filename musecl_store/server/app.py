"""``musecl serve``: the store over HTTP (FastAPI on uvicorn) and a map explorer page.

Every endpoint is a thin layer over :class:`musecl_store.api.Store`. The OpenAPI spec is at
``/openapi.json`` (and browsable at ``/docs``). Read-only unless started with writes
allowed and an API key; every bad request is a 4xx JSON ``{"error", "parameter"}``, never a
traceback.
"""

from __future__ import annotations

from pathlib import Path

import faiss
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from musecl_store import __version__
from musecl_store.api import Store
from musecl_store.errors import InputError
from musecl_store.server.deps import ServerOptions
from musecl_store.server.errors import ERRORS, install_handlers
from musecl_store.server.middleware import MAX_BODY, BodyLimit
from musecl_store.server.routers import API, page


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
    install_handlers(app)
    # The routes read these through musecl_store.server.deps.
    app.state.store = store
    app.state.options = ServerOptions(
        allow_writes=allow_writes,
        api_key=api_key,
        bundle_root=Path(bundle_root or Path.cwd()).expanduser().resolve(),
        tiles=tiles,
    )
    for router in API:
        app.include_router(router, prefix="/api", responses=ERRORS)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    return app
