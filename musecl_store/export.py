"""Exports of a city's embeddings: CSV, GeoJSON and GeoParquet.

- CSV: ``region_id,e0,...,e{d-1}``.
- GeoJSON: a FeatureCollection (EPSG:4326) of region polygons with ``region_id``, ``city``,
  ``embedding`` (list) and, for fused embeddings, ``attention``.
- GeoParquet 1.0: columns ``region_id``, ``city``, ``embedding`` (fixed-size list of
  float32) and ``geometry`` (WKB), with the ``geo`` file metadata (encoding, geometry type,
  CRS as PROJJSON, bbox) that GDAL, GeoPandas and DuckDB read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from pyproj import CRS
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.embeddings import load_embeddings
from musecl_store.errors import MuseclError
from musecl_store.models import active_model_version
from musecl_store.summary import get_city
from musecl_store.tables import Embedding, Region

FORMATS = ("csv", "geojson", "parquet")


class ExportError(MuseclError, ValueError):
    """Nothing to export, or an unknown format."""


@dataclass
class Exported:
    path: str
    format: str
    rows: int
    dim: int
    model_version: int
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def export_city(
    session: Session,
    city: str,
    out: str | Path,
    *,
    fmt: str,
    kind: str = "fused",
    model_version: int | None = None,
) -> Exported:
    """Write one city's embeddings of one kind to ``out`` in ``fmt``.

    Raises:
        ExportError: unknown format, or no embeddings of that kind and version.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    c = get_city(session, city)
    mv = model_version if model_version is not None else active_model_version(session, city)
    ids, mat = load_embeddings(session, mv, kind, c.id)
    if not ids:
        raise ExportError(f"city {city!r} has no {kind} embeddings of model version {mv}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "csv":
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["region_id", *(f"e{i}" for i in range(mat.shape[1]))])
            for rid, vec in zip(ids, mat, strict=True):
                w.writerow([rid, *(f"{v:.7g}" for v in vec)])
    else:
        geoms: dict[str, Any] = dict(
            session.execute(
                select(Region.region_id, Region.geom).where(Region.city_id == c.id)
            ).all()
        )
        shapes = [to_shape(geoms[r]) for r in ids]
        attention: dict[str, Any] = {}
        if kind == "fused":
            attention = dict(
                session.execute(
                    select(Region.region_id, Embedding.attention)
                    .join(Embedding, Embedding.region_pk == Region.id)
                    .where(
                        Region.city_id == c.id,
                        Embedding.model_version_id == mv,
                        Embedding.kind == "fused",
                    )
                ).all()
            )
        if fmt == "geojson":
            _write_geojson(tmp, city, ids, mat, shapes, attention)
        else:
            _write_geoparquet(tmp, city, ids, mat, shapes)
    tmp.replace(out)
    return Exported(str(out), fmt, len(ids), int(mat.shape[1]), mv, kind)


def _write_geojson(
    path: Path,
    city: str,
    ids: list[str],
    mat: np.ndarray,
    shapes: list[Any],
    attention: dict[str, Any],
) -> None:
    feats = []
    for rid, vec, geom in zip(ids, mat, shapes, strict=True):
        props: dict[str, Any] = {
            "region_id": rid,
            "city": city,
            "embedding": [round(float(v), 7) for v in vec],
        }
        if rid in attention:
            props["attention"] = attention[rid]
        feats.append(
            {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geom)}
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")


def _write_geoparquet(
    path: Path, city: str, ids: list[str], mat: np.ndarray, shapes: list[Any]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(mat.shape[1])
    emb = pa.FixedSizeListArray.from_arrays(pa.array(mat.astype(np.float32).ravel()), dim)
    arr = np.asarray(shapes, dtype=object)
    table = pa.table(
        {
            "region_id": pa.array(ids, pa.string()),
            "city": pa.array([city] * len(ids), pa.string()),
            "embedding": emb,
            "geometry": pa.array(list(shapely.to_wkb(arr)), pa.binary()),
        }
    )
    types = sorted({g.geom_type for g in shapes})
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": types,
                "crs": json.loads(CRS.from_epsg(4326).to_json()),
                "bbox": [float(v) for v in shapely.total_bounds(arr)],
            }
        },
    }
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
    )
    pq.write_table(table, path)
