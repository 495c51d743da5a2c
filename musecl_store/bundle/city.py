"""city.json: the city's name, CRS, H3 resolution and free metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musecl_store import geo
from musecl_store.bundle.files import CITY, MAX_CRS_NAME, MAX_NAME, is_file, load_json, unstorable
from musecl_store.errors import BundleError, BundleNotFoundError


@dataclass(frozen=True)
class CitySpec:
    name: str
    crs: str
    h3_resolution: int | None
    meta: dict[str, Any]


def read_city(root: Path) -> CitySpec:
    """Read and check city.json.

    Raises:
        BundleNotFoundError: the file is missing.
        BundleError: it is not an object with a usable name, CRS and H3 resolution.
    """
    if not is_file(root / CITY):
        raise BundleNotFoundError(f"required file {CITY} is missing from {root}", file=CITY)
    doc = load_json(root, CITY)
    if not isinstance(doc, dict):
        raise BundleError('must be a JSON object like {"name": "..."}', file=CITY)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BundleError('"name" is required and must be a non-empty string', file=CITY)
    if len(name.strip()) > MAX_NAME:
        raise BundleError(f'"name" is longer than {MAX_NAME} characters', file=CITY)
    crs_name = _crs_name(doc.get("crs", "EPSG:4326"))
    res = doc.get("h3_resolution")
    if res is not None and (
        isinstance(res, bool) or not isinstance(res, int) or not 0 <= res <= 15
    ):
        raise BundleError(
            f'"h3_resolution" must be an integer from 0 to 15, not {geo.short(res)}', file=CITY
        )
    bad = unstorable(doc)
    if bad:
        raise BundleError(f"{bad}, which the store cannot hold", file=CITY)
    meta = {k: v for k, v in doc.items() if k not in ("name", "crs", "h3_resolution")}
    return CitySpec(name=name.strip(), crs=crs_name, h3_resolution=res, meta=meta)


def _crs_name(crs_name: Any) -> str:
    """The "crs" of city.json as the store keeps it: as given, or its EPSG code when the
    given name is too long to store."""
    if not isinstance(crs_name, str):
        raise BundleError(
            f'"crs" must be a string like "EPSG:4326", not {geo.short(crs_name)}', file=CITY
        )
    try:
        crs = geo.horizontal_crs(crs_name)
    except ValueError as exc:
        raise BundleError(f'"crs": {exc}', file=CITY) from exc
    if len(crs_name) > MAX_CRS_NAME:
        code = crs.to_authority(min_confidence=100)
        if code is None:
            raise BundleError(
                f'"crs" is longer than {MAX_CRS_NAME} characters and has no EPSG code; name '
                'the CRS by its code, such as "EPSG:32632"',
                file=CITY,
            )
        crs_name = ":".join(code)
    return crs_name
