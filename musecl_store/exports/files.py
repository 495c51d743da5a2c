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
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS
from sqlalchemy.orm import Session

from musecl_store.errors import MuseclError
from musecl_store.store.cities import get_city
from musecl_store.store.vectors import EmbeddingChunk, iter_embeddings
from musecl_store.store.versions import resolve as resolve_model_version

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

    The rows stream from the database in batches of
    :data:`~musecl_store.store.vectors.CHUNK_ROWS` regions and are written as they come:
    memory follows the batch, not the city.

    Raises:
        ExportError: unknown format, or no embeddings of that kind and version.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    c = get_city(session, city)
    mv = resolve_model_version(session, city, model_version)
    chunks = iter_embeddings(
        session,
        mv,
        kind,
        c.id,
        geometry=fmt != "csv",
        attention=fmt == "geojson" and kind == "fused",
    )
    first = next(chunks, None)
    if first is None:
        raise ExportError(f"city {city!r} has no {kind} embeddings of model version {mv}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = {"csv": _write_csv, "geojson": _write_geojson, "parquet": _write_geoparquet}[fmt]
    try:
        rows = writer(tmp, city, itertools.chain([first], chunks))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        chunks.close()  # on PostgreSQL, ends the COPY when a writer failed half-way
    tmp.replace(out)
    return Exported(str(out), fmt, rows, int(first.vectors.shape[1]), mv, kind)


def _write_csv(path: Path, city: str, chunks: Iterable[EmbeddingChunk]) -> int:
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for chunk in chunks:
            if not rows:
                w.writerow(["region_id", *(f"e{i}" for i in range(chunk.vectors.shape[1]))])
            w.writerows(
                [rid, *(f"{v:.7g}" for v in vec)]
                for rid, vec in zip(chunk.ids, chunk.vectors, strict=True)
            )
            rows += len(chunk.ids)
    return rows


def _write_geojson(path: Path, city: str, chunks: Iterable[EmbeddingChunk]) -> int:
    """A FeatureCollection written feature by feature, the same bytes as ``json.dumps`` of
    the whole collection."""
    rows = 0
    with path.open("w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for chunk in chunks:
            assert chunk.geometries is not None
            for i, (rid, vec, geom) in enumerate(
                zip(chunk.ids, chunk.vectors, chunk.geometries, strict=True)
            ):
                props: dict[str, Any] = {
                    "region_id": rid,
                    "city": city,
                    "embedding": [round(float(v), 7) for v in vec],
                }
                if chunk.attention is not None:
                    props["attention"] = chunk.attention[i]
                feature = {
                    "type": "Feature",
                    "properties": props,
                    "geometry": shapely.geometry.mapping(geom),
                }
                f.write((", " if rows else "") + json.dumps(feature))
                rows += 1
        f.write("]}")
    return rows


def _write_geoparquet(path: Path, city: str, chunks: Iterable[EmbeddingChunk]) -> int:
    """GeoParquet with a row group per batch. The ``geo`` metadata (bbox, geometry types)
    is known only after the last batch and pyarrow takes a file's schema metadata when it
    opens the writer: the batches go to a scratch file first, then are copied row group by
    row group into the final file, whose writer has the metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scratch = path.with_name(path.name + ".part")
    rows, types = 0, set[str]()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    try:
        writer: pq.ParquetWriter | None = None
        for chunk in chunks:
            assert chunk.geometries is not None
            dim = int(chunk.vectors.shape[1])
            table = pa.table(
                {
                    "region_id": pa.array(chunk.ids, pa.string()),
                    "city": pa.array([city] * len(chunk.ids), pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(chunk.vectors.astype(np.float32, copy=False).ravel()), dim
                    ),
                    "geometry": pa.array(list(shapely.to_wkb(chunk.geometries)), pa.binary()),
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(scratch, table.schema)
            writer.write_table(table)
            rows += len(chunk.ids)
            types.update(g.geom_type for g in chunk.geometries)
            box = shapely.total_bounds(chunk.geometries)
            bounds = np.concatenate([np.fmin(bounds[:2], box[:2]), np.fmax(bounds[2:], box[2:])])
        if writer is None:
            raise ExportError("nothing to export")
        writer.close()
        geo = {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {
                "geometry": {
                    "encoding": "WKB",
                    "geometry_types": sorted(types),
                    "crs": json.loads(CRS.from_epsg(4326).to_json()),
                    "bbox": [float(v) for v in bounds],
                }
            },
        }
        source = pq.ParquetFile(scratch)
        schema = source.schema_arrow
        schema = schema.with_metadata({**(schema.metadata or {}), b"geo": json.dumps(geo).encode()})
        with pq.ParquetWriter(path, schema) as final:
            for i in range(source.num_row_groups):
                final.write_table(source.read_row_group(i))
        source.close()
    finally:
        scratch.unlink(missing_ok=True)
    return rows
