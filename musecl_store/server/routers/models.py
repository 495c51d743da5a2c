"""The store's trained things: model versions and fitted regressors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from musecl_store.server.deps import StoreDep

router = APIRouter()


@router.get("/models", summary="Model versions with embedding counts and mean R²")
def models(
    store: StoreDep, city: Annotated[str | None, Query(max_length=200)] = None
) -> list[dict[str, Any]]:
    return store.models(city)


@router.get("/regressors", summary="The fitted regressors and their cross-validated metrics")
def regressors(store: StoreDep) -> list[dict[str, Any]]:
    return store.regressors()
