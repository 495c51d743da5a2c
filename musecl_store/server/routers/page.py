"""The map explorer page (``/``) and its settings (``/config.json``); not in the OpenAPI
document. Its scripts and styles are the static files mounted by the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from musecl_store import __version__
from musecl_store.server.deps import OptionsDep

STATIC = Path(__file__).parent.parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/config.json")
def page_config(options: OptionsDep) -> dict[str, Any]:
    return {"tiles": options.tiles, "writes": options.allow_writes, "version": __version__}
