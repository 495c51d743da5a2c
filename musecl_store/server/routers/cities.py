"""The cities in the store: the list, one city's counts, and what its map can show."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter

from musecl_store.server.deps import CityName, StoreDep
from musecl_store.server.schemas import CityOut, LayersOut

router = APIRouter()


@router.get("/cities", response_model=list[CityOut], summary="The cities in the store")
def cities(store: StoreDep) -> Any:
    return json.loads(store.cities().to_json(orient="records"))


@router.get("/cities/{city}", summary="Counts of what the store holds for one city")
def info(store: StoreDep, city: CityName) -> dict[str, Any]:
    return store.info(city)


@router.get("/cities/{city}/layers", response_model=LayersOut, summary="What a map can show")
def layers(store: StoreDep, city: CityName) -> Any:
    info = store.info(city)
    return {"indicators": sorted(info["indicators"]), "predictions": store.predicted(city)}
