"""Reading bundles, without a database: regions, H3 tiling, CRSs, points, reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from musecl_store import geo
from musecl_store.bundle.reader import read_bundle
from musecl_store.errors import BundleError


def test_tiny_bundle_reads_cleanly(tiny_bundle: Path) -> None:
    b = read_bundle(tiny_bundle)
    assert b.report.total() == 0
    assert [r.region_id for r in b.regions] == [f"r{i}" for i in range(6)]
    assert len(b.pois) == 15 and len(b.images) == 6
    p2 = next(p for p in b.pois if p.poi_id == "p2")
    assert p2.name == "Café Zoë" and p2.text == "leafy street\nwith a line break"
    assert next(p for p in b.pois if p.poi_id == "p4").name == 'The "Quoted, Name"'
    assert int(b.mobility.outflow.sum()) == 9 and int(b.mobility.inflow.sum()) == 9
    assert b.mobility.od[(0, 1)] == 2 and b.mobility.od[(0, 0)] == 1
    assert b.indicators[2] == {"population_density": 1500.0}  # a blank cell is unknown, not 0
    assert b.census[0].fields == ["median_income", "population"]  # tract_id is not numeric
    assert b.city.meta == {"source": "tests"}  # unknown keys are kept as metadata


def test_points_on_shared_borders_go_to_one_region() -> None:
    squares = [
        geo.polygonal(
            geo.geojson_geometry(
                {
                    "type": "Polygon",
                    "coordinates": [[[x, 0], [x + 1, 0], [x + 1, 1], [x, 1], [x, 0]]],
                }
            )
        )
        for x in (0, 1)
    ]
    loc = geo.RegionLocator(squares)
    got = loc.locate(np.array([0.5, 1.0, 1.5, 5.0, np.nan]), np.array([0.5, 0.5, 0.5, 0.5, 0.5]))
    assert got.tolist() == [0, 0, 1, -1, -1]


def test_boundary_is_tiled_into_h3_cells_whose_centre_lies_inside(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    (root / "regions.geojson").unlink()
    (root / "indicators.csv").unlink()
    ring = [[10.0, 50.0], [10.05, 50.0], [10.05, 50.03], [10.0, 50.03], [10.0, 50.0]]
    (root / "boundary.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                    }
                ],
            }
        )
    )
    b = read_bundle(root)
    import h3

    assert b.regions and all(h3.get_resolution(r.region_id) == 8 for r in b.regions)
    assert all(r.h3_cell == r.region_id for r in b.regions)
    for r in b.regions:
        lat, lon = h3.cell_to_latlng(r.region_id)
        assert 10.0 < lon < 10.05 and 50.0 < lat < 50.03
    for p in b.pois:  # every POI sits in the cell that H3 itself gives
        assert b.regions[p.region].region_id == h3.latlng_to_cell(p.lat, p.lon, 8)


def test_projected_bundle_reads_like_lonlat(tmp_path: Path, tiny_bundle: Path) -> None:
    """The same bundle written in EPSG:3857 gives the same regions and assignments."""
    root = tmp_path / "p"
    shutil.copytree(tiny_bundle, root)
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    city = json.loads((root / "city.json").read_text())
    city["crs"] = "EPSG:3857"
    (root / "city.json").write_text(json.dumps(city))
    for name in ["regions.geojson", "census/tracts.geojson"]:
        doc = json.loads((root / name).read_text())
        for f in doc["features"]:
            f["geometry"]["coordinates"] = [
                [list(t.transform(x, y)) for x, y in ring] for ring in f["geometry"]["coordinates"]
            ]
        (root / name).write_text(json.dumps(doc))
    import csv

    for name, pairs in [
        ("pois.csv", [("lon", "lat")]),
        ("images.csv", [("lon", "lat")]),
        ("trips.csv", [("origin_lon", "origin_lat"), ("dest_lon", "dest_lat")]),
    ]:
        with (root / name).open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for xk, yk in pairs:
                x, y = t.transform(float(row[xk]), float(row[yk]))
                row[xk], row[yk] = repr(x), repr(y)
        with (root / name).open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    a, b = read_bundle(tiny_bundle), read_bundle(root)
    assert b.report.total() == 0
    assert [r.region_id for r in a.regions] == [r.region_id for r in b.regions]
    for ra, rb in zip(a.regions, b.regions, strict=True):
        assert ra.geom.symmetric_difference(rb.geom).area < 1e-12
    assert [(p.poi_id, p.region) for p in a.pois] == [(p.poi_id, p.region) for p in b.pois]
    assert a.mobility.od == b.mobility.od
    assert [p.lon for p in b.pois] == pytest.approx([p.lon for p in a.pois], abs=1e-9)


def test_most_points_off_the_globe_means_a_wrong_crs(tmp_path: Path, tiny_bundle: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(tiny_bundle, root)
    text = (root / "pois.csv").read_text(encoding="utf-8").replace(",10.0", ",1000000.0")
    (root / "pois.csv").write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match=r"pois\.csv: 15 of 15 coordinates .* the CRS is wrong"):
        read_bundle(root)


def test_missing_directory() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_bundle("/no/such/bundle")
