"""The server's routes, one module per resource; :data:`API` lists the routers served
under ``/api``, in the order the OpenAPI document shows them."""

from __future__ import annotations

from fastapi import APIRouter

from musecl_store.server.routers import cities, features, health, models, regions, search, writes

API: tuple[APIRouter, ...] = (
    health.router,
    cities.router,
    regions.router,
    search.router,
    features.router,
    models.router,
    writes.router,
)

__all__ = ["API"]
