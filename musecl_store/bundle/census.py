"""census/*.geojson: statistical layers on their own polygons, with their numeric fields."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyproj import CRS
from shapely.geometry import MultiPolygon

from musecl_store import geo
from musecl_store.bundle.files import CENSUS_DIR, MAX_NAME, inside, is_file, unstorable
from musecl_store.bundle.geojson import check_lonlat, features, fix
from musecl_store.bundle.report import Report
from musecl_store.hashing import digest
from musecl_store.text import bad_char


@dataclass
class CensusLayerRecord:
    name: str
    fields: list[str]
    features: list[tuple[int, MultiPolygon, dict[str, Any]]]
    content_hash: str


def read_census(root: Path, crs: CRS, report: Report) -> list[CensusLayerRecord]:
    """The layers of the census folder (none when it is absent), by file name; a layer,
    feature or name that cannot be used is skipped and reported."""
    folder = root / CENSUS_DIR
    if not folder.is_dir():
        return []
    rp = geo.Reprojector(crs)
    layers: list[CensusLayerRecord] = []
    for path in sorted(folder.glob("*.geojson")):
        name = f"{CENSUS_DIR}/{path.name}"
        bad = bad_char(path.stem)  # a file name that is not UTF-8 decodes to surrogates
        if bad or len(path.stem) > MAX_NAME:
            what = f"holds {bad}" if bad else f"is longer than {MAX_NAME} characters"
            report.skip(name, None, f"the layer name {what}; not stored", kind="bad layer name")
            continue
        if not is_file(inside(root, name)):
            report.skip(name, None, "is not a file; not read", kind="not a file")
            continue
        rows = [
            row
            for no, feat in enumerate(features(root, name, crs), start=1)
            if (row := _feature(feat, no, name, crs, rp, report)) is not None
        ]
        if not rows:
            report.skip(name, None, "layer has no usable polygon; not stored", kind="empty layer")
            continue
        fields = sorted(
            k
            for k in {k for _, _, p in rows for k in p}
            if all(p.get(k) is None or _numeric(p.get(k)) for _, _, p in rows)
            and any(p.get(k) is not None for _, _, p in rows)
        )
        layers.append(
            CensusLayerRecord(path.stem, fields, rows, digest(crs.to_string(), path.read_bytes()))
        )
    return layers


def _feature(
    feat: Any, no: int, name: str, crs: CRS, rp: geo.Reprojector, report: Report
) -> tuple[int, MultiPolygon, dict[str, Any]] | None:
    """Feature ``no`` of layer file ``name`` as (number, lon/lat polygon, properties), or
    None when it is skipped (and reported)."""
    gj = feat.get("geometry") if isinstance(feat, dict) else None
    if not isinstance(gj, dict) or gj.get("type") not in ("Polygon", "MultiPolygon"):
        report.skip(
            name,
            no,
            "census features must be Polygon or MultiPolygon",
            kind="non-polygon feature",
        )
        return None
    try:
        raw = geo.geojson_geometry(gj)
    except ValueError as exc:
        report.skip(name, no, str(exc), kind="malformed geometry")
        return None
    if raw.is_empty:
        report.skip(name, no, "empty polygon", kind="empty polygon")
        return None
    props = feat.get("properties") or {}
    bad = unstorable(props)
    if bad:
        report.skip(name, no, f"properties: {bad}, which the store cannot hold", kind="bad text")
        return None
    g = rp.geometry(raw)
    check_lonlat(g, name, crs, raw, no)
    fixed, why = fix(g, name, no)
    if why:
        report.fix(
            name,
            no,
            f"invalid polygon ({why}) repaired with make_valid",
            kind="invalid polygon repaired",
        )
    if fixed.is_empty:
        report.skip(name, no, "empty polygon", kind="empty polygon")
        return None
    return no, fixed, props if isinstance(props, dict) else {}


def _numeric(v: Any) -> bool:
    """A census value that is a number a double can hold (not a bool, not 1e400 as an int)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False
