"""Exports (CSV, GeoJSON, GeoParquet), maps, and GDAL reading the regions layer from PostGIS."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from sqlalchemy.engine import make_url

from musecl_store.exports.files import ExportError, export_city
from musecl_store.exports.maps import MapError, draw
from musecl_store.nn.fusion import BRANCHES
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.vectors import load_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture
def engine2(backend, trained: str):  # type: ignore[no-untyped-def]
    e = create_engine(backend.clone(trained))
    yield e
    e.dispose()


def test_exports_round_trip(engine2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine2) as s:
        ids, mat = load_embeddings(s, 1, "fused")
        for fmt in ("csv", "geojson", "parquet"):
            out = export_city(s, "demo-3", tmp_path / f"e.{fmt}", fmt=fmt)
            assert out.rows == len(ids) and out.dim == 128
        with pytest.raises(ExportError, match="format must be one of"):
            export_city(s, "demo-3", tmp_path / "x", fmt="xlsx")
    with (tmp_path / "e.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["region_id", *(f"e{i}" for i in range(128))]
    assert [r[0] for r in rows[1:]] == ids
    np.testing.assert_allclose(
        np.array(rows[1:], dtype=object)[:, 1:].astype(float), mat, rtol=1e-6
    )
    doc = json.loads((tmp_path / "e.geojson").read_text())
    assert len(doc["features"]) == len(ids)
    f0 = doc["features"][0]
    assert f0["geometry"]["type"] == "MultiPolygon" and len(f0["properties"]["embedding"]) == 128
    assert set(f0["properties"]["attention"]) == set(BRANCHES)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "e.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    geoms = shapely.from_wkb(table.column("geometry").to_pylist())
    assert all(g.geom_type == "MultiPolygon" and g.is_valid for g in geoms)
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), mat)


def test_maps(engine2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine2) as s:
        ids, _ = load_embeddings(s, 1, "fused")
        a = draw(s, "demo-3", tmp_path / "pop.png", indicator="population_density", width=400)
        b = draw(s, "demo-3", tmp_path / "sim.png", similar_to=ids[0], width=400)
        with pytest.raises(MapError, match="exactly one"):
            draw(s, "demo-3", tmp_path / "x.png")
        with pytest.raises(MapError, match="no values of indicator 'gdp'"):
            draw(s, "demo-3", tmp_path / "x.png", indicator="gdp")
    assert a.with_value <= a.regions and b.vmax == pytest.approx(1.0)
    img = Image.open(tmp_path / "sim.png")
    assert img.size[0] == 400 and img.format == "PNG"
    colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=100000)}
    assert len(colours) > 20  # a real choropleth, not a blank canvas
    # the query region is marked and its k most similar are outlined in red
    assert b.query == ids[0] and b.top is not None and len(b.top) == 10
    assert ids[0] not in b.top and a.top is None
    counts = dict((c, n) for n, c in img.convert("RGB").getcolors(maxcolors=100000))
    assert counts.get((220, 20, 60), 0) > 100 and counts.get((0, 0, 0), 0) > 50


def test_ogrinfo_reads_the_regions_layer_from_postgis(backend, trained: str) -> None:  # type: ignore[no-untyped-def]
    if backend.name != "postgis":
        pytest.skip("GDAL's PostgreSQL driver is for the PostGIS backend")
    if shutil.which("ogrinfo") is None:
        pytest.skip("ogrinfo (gdal-bin) is not installed")
    url = make_url(trained)
    host = url.host or url.query.get("host", "/var/run/postgresql")
    conn = f"PG:dbname={url.database} host={host} user={url.username}"
    if url.port:
        conn += f" port={url.port}"
    for layer in ("regions", "region_embeddings"):  # the table and the view QGIS users open
        out = subprocess.run(
            ["ogrinfo", "-ro", "-so", conn, layer], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "Geometry (geom): Multi Polygon" in out.stdout
        assert 'ID["EPSG",4326]' in out.stdout
        assert "Feature Count: " in out.stdout
