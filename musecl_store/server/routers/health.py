"""``GET /api/health``: is the server up, and which store it serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from musecl_store import __version__
from musecl_store.server.deps import StoreDep

router = APIRouter()


@router.get("/health", summary="Liveness and the store's schema")
def health(store: StoreDep) -> dict[str, Any]:
    return {"ok": True, "version": __version__, "database": store.shown_url}
