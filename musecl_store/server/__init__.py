"""``musecl serve``: the store over HTTP (FastAPI) and the map explorer page."""

from musecl_store.server.app import create_app

__all__ = ["create_app"]
