"""Regenerate tests/bundles/: a tiny valid bundle and broken copies with one defect each.

Run from the repository root: ``python tests/bundles/make_corpus.py``. Each broken bundle has
an ``expect.json``: {"fatal": bool, "match": regex the error or a reported problem must match}.
The output is committed; this script documents how each defect was made.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny"
BROKEN = HERE / "broken"

X0, Y0, D = 10.0, 50.0, 0.01  # a 3 x 2 grid of 0.01 degree squares


def square(i: int, j: int) -> list[list[list[float]]]:
    x, y = X0 + i * D, Y0 + j * D
    return [[[x, y], [x + D, y], [x + D, y + D], [x, y + D], [x, y]]]


def centre(i: int, j: int, dx: float = 0.5, dy: float = 0.5) -> tuple[float, float]:
    return round(X0 + (i + dx) * D, 6), round(Y0 + (j + dy) * D, 6)


CELLS = [(i, j) for j in range(2) for i in range(3)]
IDS = [f"r{k}" for k in range(len(CELLS))]


def write_tiny(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "city.json").write_text(
        json.dumps(
            {"name": "tiny", "crs": "EPSG:4326", "h3_resolution": 8, "source": "tests"}, indent=2
        )
    )
    feats = [
        {
            "type": "Feature",
            "properties": {"region_id": rid, "label": f"block {rid}"},
            "geometry": {"type": "Polygon", "coordinates": square(*c)},
        }
        for rid, c in zip(IDS, CELLS, strict=True)
    ]
    (root / "regions.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": feats}, indent=1)
    )
    cats = ["restaurant", "cafe", "school", "park", "bar", "amenity=pharmacy"]
    names = ["Rosa's Bistro", "", "Café Zoë", "東京ラーメン", 'The "Quoted, Name"', "Park"]
    texts = ["", "cheap, busy", "leafy street\nwith a line break", "upscale"]
    with (root / "pois.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["poi_id", "lon", "lat", "name", "category", "text"])
        k = 0
        for n, c in enumerate(CELLS):
            for m in range(2 + n % 2):
                k += 1
                lon, lat = centre(*c, 0.2 + 0.3 * m, 0.3 + 0.2 * m)
                w.writerow([f"p{k}", lon, lat, names[k % 6], cats[k % 6], texts[k % 4]])
    trips = ["origin_lon,origin_lat,dest_lon,dest_lat,departure_time"]
    for a, b in [(0, 1), (0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (1, 4), (0, 0)]:
        o, d = centre(*CELLS[a]), centre(*CELLS[b], 0.7, 0.4)
        trips.append(f"{o[0]},{o[1]},{d[0]},{d[1]},2024-05-01T08:00:00")
    (root / "trips.csv").write_text("\n".join(trips) + "\n")
    (root / "images").mkdir()
    imgs = ["path,kind,lon,lat,heading"]
    for n, c in enumerate(CELLS[:4]):
        img = Image.new("RGB", (8, 8), (40 * n, 120, 200 - 30 * n))
        img.save(root / "images" / f"remote_{n}.png")
        lon, lat = centre(*c)
        imgs.append(f"images/remote_{n}.png,remote,{lon},{lat},")
    for n, c in enumerate(CELLS[1:3]):
        Image.new("RGB", (8, 8), (200, 30 * n, 90)).save(root / "images" / f"street_{n}.jpg")
        lon, lat = centre(*c, 0.3, 0.6)
        imgs.append(f"images/street_{n}.jpg,street,{lon},{lat},{90 * n}")
    (root / "images.csv").write_text("\n".join(imgs) + "\n")
    ind = ["region_id,population_density,crime"]
    for n, rid in enumerate(IDS):
        ind.append(f"{rid},{1000 + 250 * n},{'' if n == 2 else 3 * n}")
    (root / "indicators.csv").write_text("\n".join(ind) + "\n")
    (root / "census").mkdir()
    tracts = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"tract_id": "A", "population": 5000, "median_income": 41000.5},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [X0, Y0],
                            [X0 + 1.5 * D, Y0],
                            [X0 + 1.5 * D, Y0 + 2 * D],
                            [X0, Y0 + 2 * D],
                            [X0, Y0],
                        ]
                    ],
                },
            },
            {
                "type": "Feature",
                "properties": {"tract_id": "B", "population": 7000, "median_income": None},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [X0 + 1.5 * D, Y0],
                            [X0 + 3 * D, Y0],
                            [X0 + 3 * D, Y0 + 2 * D],
                            [X0 + 1.5 * D, Y0 + 2 * D],
                            [X0 + 1.5 * D, Y0],
                        ]
                    ],
                },
            },
        ],
    }
    (root / "census" / "tracts.geojson").write_text(json.dumps(tracts, indent=1))


def edit(root: Path, name: str, fn) -> None:  # type: ignore[no-untyped-def]
    p = root / name
    p.write_text(fn(p.read_text(encoding="utf-8")), encoding="utf-8")


def edit_json(root: Path, name: str, fn) -> None:  # type: ignore[no-untyped-def]
    p = root / name
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc, indent=1))


def set_geom(i: int, geom: dict) -> object:
    def fn(doc: dict) -> None:
        doc["features"][i]["geometry"] = geom

    return fn


DEFECTS = {
    # fatal: the ingest writes nothing
    "missing_city_json": (True, r"city\.json.*missing", lambda r: (r / "city.json").unlink()),
    "invalid_city_json": (
        True,
        r"city\.json:1: invalid JSON",
        lambda r: (r / "city.json").write_text('{"name": "tiny",'),
    ),
    "city_without_name": (
        True,
        r"city\.json.*\"name\" is required",
        lambda r: edit_json(r, "city.json", lambda d: d.pop("name")),
    ),
    "unknown_crs": (
        True,
        r"city\.json.*unknown CRS 'EPSG:999999'",
        lambda r: edit_json(r, "city.json", lambda d: d.update(crs="EPSG:999999")),
    ),
    "missing_pois_csv": (True, r"pois\.csv is missing", lambda r: (r / "pois.csv").unlink()),
    "missing_poi_column": (
        True,
        r"pois\.csv:1: missing required column\(s\) category",
        lambda r: edit(r, "pois.csv", lambda s: s.replace(",category,", ",kind,", 1)),
    ),
    "no_regions_no_boundary": (
        True,
        r"needs regions\.geojson or.*boundary\.geojson",
        lambda r: (r / "regions.geojson").unlink(),
    ),
    "duplicate_region_id": (
        True,
        r"regions\.geojson:2: region_id 'r0' is not unique",
        lambda r: edit_json(
            r, "regions.geojson", lambda d: d["features"][1]["properties"].update(region_id="r0")
        ),
    ),
    "missing_region_id": (
        True,
        r"regions\.geojson:3: feature 3 has no usable \"region_id\"",
        lambda r: edit_json(
            r, "regions.geojson", lambda d: d["features"][2]["properties"].pop("region_id")
        ),
    ),
    "point_region": (
        True,
        r"regions\.geojson:4: region 'r3' has geometry Point",
        lambda r: edit_json(
            r, "regions.geojson", set_geom(3, {"type": "Point", "coordinates": [10.0, 50.0]})
        ),
    ),
    "overlapping_regions": (
        True,
        r"regions 'r0' .* and 'r1' .* overlap by",
        lambda r: edit_json(
            r,
            "regions.geojson",
            set_geom(
                1,
                {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [X0 + 0.5 * D, Y0],
                            [X0 + 2 * D, Y0],
                            [X0 + 2 * D, Y0 + D],
                            [X0 + 0.5 * D, Y0 + D],
                            [X0 + 0.5 * D, Y0],
                        ]
                    ],
                },
            ),
        ),
    ),
    "projected_coordinates": (
        True,
        r"regions\.geojson:1: coordinates such as .* not longitude/latitude.*CRS is wrong",
        lambda r: edit_json(
            r,
            "regions.geojson",
            lambda d: [
                f["geometry"].update(
                    coordinates=[
                        [[x * 111000, y * 111000] for x, y in ring]
                        for ring in f["geometry"]["coordinates"]
                    ]
                )
                for f in d["features"]
            ],
        ),
    ),
    "geojson_crs_mismatch": (
        True,
        r"regions\.geojson: declares CRS .*3857.* but city\.json says",
        lambda r: edit_json(
            r,
            "regions.geojson",
            lambda d: d.update(
                crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
            ),
        ),
    ),
    "pois_not_utf8": (
        True,
        r"pois\.csv:3: not valid UTF-8",
        lambda r: (r / "pois.csv").write_bytes(
            (r / "pois.csv").read_bytes().replace("Café".encode(), "Caf\xe9".encode("latin-1"))
        ),
    ),
    "indicators_without_values": (
        True,
        r"indicators\.csv:1: has no indicator column",
        lambda r: (r / "indicators.csv").write_text("region_id\nr0\n"),
    ),
    "pois_csv_links_outside": (
        True,
        r"pois\.csv: is a symbolic link to .* outside the bundle",
        lambda r: _link(r / "pois.csv", "../../tiny/pois.csv"),
    ),
    "city_json_nan": (
        True,
        r"city\.json: invalid JSON: NaN is not valid JSON",
        lambda r: edit(r, "city.json", lambda s: s.replace('"tests"', "NaN")),
    ),
    # reported: the ingest goes on, and says what it skipped or fixed
    "bowtie_region": (
        False,
        r"regions\.geojson:1: region 'r0' was invalid \(Self-intersection.*repaired",
        lambda r: edit_json(
            r,
            "regions.geojson",
            set_geom(
                0,
                {
                    "type": "Polygon",
                    "coordinates": [
                        [[X0, Y0], [X0 + D, Y0 + D], [X0 + D, Y0], [X0, Y0 + D], [X0, Y0]]
                    ],
                },
            ),
        ),
    ),
    "unparsable_poi_lon": (
        False,
        r"pois\.csv:3: lon 'abc' is not a number",
        lambda r: edit(r, "pois.csv", lambda s: _replace_field(s, 2, 1, "abc")),
    ),
    "poi_outside_regions": (
        False,
        r"pois\.csv:\d+: poi \(11\.000000, 51\.000000\) falls in no region",
        lambda r: edit(r, "pois.csv", lambda s: s + "p999,11.0,51.0,Far Away,cafe,\n"),
    ),
    "duplicate_poi_id": (
        False,
        r"pois\.csv:\d+: poi_id 'p1' is not unique \(first on line 2\)",
        lambda r: edit(r, "pois.csv", lambda s: s + "p1,10.005,50.005,Copy,cafe,\n"),
    ),
    "poi_row_too_short": (
        False,
        r"pois\.csv:\d+: 3 fields, the header has 6",
        lambda r: edit(r, "pois.csv", lambda s: s + "p500,10.005,50.005\n"),
    ),
    "undecodable_image": (
        False,
        r"images\.csv:2: cannot decode image 'remote_0\.png'",
        lambda r: (r / "images" / "remote_0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png"),
    ),
    "missing_image_file": (
        False,
        r"images\.csv:3: image file 'images/remote_1\.png' does not exist",
        lambda r: (r / "images" / "remote_1.png").unlink(),
    ),
    "image_path_escapes": (
        False,
        r"images\.csv:\d+: path '\.\./secret\.png' must be relative",
        lambda r: edit(r, "images.csv", lambda s: s + "../secret.png,remote,10.005,50.005,\n"),
    ),
    "unknown_image_kind": (
        False,
        r"images\.csv:\d+: kind 'aerial' is neither",
        lambda r: edit(
            r, "images.csv", lambda s: s + "images/remote_0.png,aerial,10.005,50.005,\n"
        ),
    ),
    "trip_bad_coordinate": (
        False,
        r"trips\.csv:3: dest_lat 'north' is not a number",
        lambda r: edit(r, "trips.csv", lambda s: _replace_field(s, 2, 3, "north")),
    ),
    "indicator_unknown_region": (
        False,
        r"indicators\.csv:\d+: region_id 'r99' is not a region",
        lambda r: edit(r, "indicators.csv", lambda s: s + "r99,5,5\n"),
    ),
    "indicator_not_numeric": (
        False,
        r"indicators\.csv:2: indicator 'population_density' value 'lots' is not a number",
        lambda r: edit(r, "indicators.csv", lambda s: _replace_field(s, 1, 1, "lots")),
    ),
    "poi_name_with_nul": (
        False,
        r"pois\.csv:21: name holds a NUL character; the store cannot hold it",
        lambda r: edit(r, "pois.csv", lambda s: s + "p99,10.005,50.005,Nul\x00Name,cafe,\n"),
    ),
    "census_point_feature": (
        False,
        r"census/tracts\.geojson:2: census features must be Polygon",
        lambda r: edit_json(
            r, "census/tracts.geojson", set_geom(1, {"type": "Point", "coordinates": [10.0, 50.0]})
        ),
    ),
}


def _link(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


def _replace_field(text: str, line_index: int, field: int, value: str) -> str:
    lines = text.split("\n")
    parts = lines[line_index].split(",")
    parts[field] = value
    lines[line_index] = ",".join(parts)
    return "\n".join(lines)


def write_defect(name: str) -> None:
    fatal, match, apply = DEFECTS[name]
    root = BROKEN / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(TINY, root)
    apply(root)
    (root / "expect.json").write_text(json.dumps({"fatal": fatal, "match": match}, indent=1) + "\n")


def main(only: list[str]) -> None:
    """Everything, or (``python tests/bundles/make_corpus.py NAME ...``) only the broken
    bundles named, from the tiny bundle as it is."""
    if only:
        for name in only:
            write_defect(name)
        print(f"wrote {len(only)} broken bundles in {BROKEN}")
        return
    shutil.rmtree(TINY, ignore_errors=True)
    shutil.rmtree(BROKEN, ignore_errors=True)
    write_tiny(TINY)
    for name in DEFECTS:
        write_defect(name)
    print(f"wrote {TINY} and {len(DEFECTS)} broken bundles in {BROKEN}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
