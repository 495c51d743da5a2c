"""The writes: ingest a bundle folder on the server, re-embed changed regions. Both need
the server started with writes allowed and the API key (:func:`.deps.writer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from musecl_store.server.deps import CityName, OptionsDep, StoreDep, writer
from musecl_store.server.errors import WRITE_ERRORS, ApiError
from musecl_store.server.schemas import IngestIn, ReembedIn

router = APIRouter(responses=WRITE_ERRORS, dependencies=[Depends(writer)])


@router.post(
    "/ingest",
    summary="Ingest a bundle folder on the server (needs --allow-writes and the API key)",
)
def ingest(store: StoreDep, options: OptionsDep, body: IngestIn) -> dict[str, Any]:
    root = options.bundle_root
    path = Path(body.path).expanduser().resolve()
    if not path.is_relative_to(root):
        raise ApiError(403, f"bundles must lie under {root} (--bundle-root)", "path")
    summary = store.ingest(path, check=body.check, show_progress=False)
    return {**summary.to_dict(), "checked_only": body.check}


@router.post(
    "/cities/{city}/reembed",
    summary="Re-embed changed regions with the frozen model (needs writes and the API key)",
)
def reembed(store: StoreDep, city: CityName, body: ReembedIn) -> dict[str, Any]:
    return store.reembed(
        city,
        regions=body.regions,
        since=body.since,
        all_regions=body.all_regions,
        model_version=body.model_version,
        show_progress=False,
    )
