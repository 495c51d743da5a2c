"""Hostile bundles, generated: property-based fuzzing (hypothesis) of the bundle reader.

``read_bundle`` reads a bundle or raises :class:`BundleError` whose ``.file`` names the file at
fault (the mutated one; any bundle file for city.json, whose CRS changes how the others read),
with ``.line`` a positive row or feature number where it has one, and a one-line message that
starts with the file's name. Nothing else ever escapes. What it does read, the store can hold:
no NUL or lone surrogate in stored text, names within the column limits, finite JSON, and no
image file outside the bundle (a symbolic link that leaves the bundle is refused like a ``..``
path).

Settings, shared strategies and fixtures: tests/fuzzing.py. Cases per test:

    test_city_json_fuzz ............................ 300
    test_regions_geojson_fuzz ...................... 400
    test_boundary_geojson_fuzz ..................... 200
    test_census_geojson_fuzz ....................... 250
    test_csv_fuzz[pois.csv, trips.csv, images.csv,
                  indicators.csv] .................. 4 x 300
    test_image_files_fuzz .......................... 200
    total .......................................... 2550
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from musecl_store import geo
from musecl_store.bundle import reader as bundle_module
from musecl_store.bundle.reader import MAX_CRS_NAME, MAX_NAME, MAX_REGION_ID, Bundle, read_bundle
from musecl_store.errors import BundleError
from tests.fuzzing import (
    JSON,
    NEAR_X,
    NEAR_Y,
    RAW_JSON,
    TEXT,
    TINY,
    TINY_CITY,
    box_ring,
    cases,
    csv_text,
    dumps,
    geometry,
    position,
    ring,
    tiny_json,
)

FILES = [
    "city.json",
    "regions.geojson",
    "boundary.geojson",
    "pois.csv",
    "trips.csv",
    "images.csv",
    "indicators.csv",
    "census/tracts.geojson",
]


# ---------------------------------------------------------------------------- strategies


def _ring_op(draw: st.DrawFn, coords: list[Any]) -> None:
    """Break one ring of a real region: unclose it, poison a point, bow-tie it, blow it up."""
    r = coords[0]
    op = draw(st.integers(0, 7))
    if op == 0:
        r.pop()  # no longer closed
    elif op == 1:
        r[draw(st.integers(0, len(r) - 1))] = draw(position())
    elif op == 2:
        r[1], r[2] = r[2], r[1]  # bow-tie
    elif op == 3:
        coords[0] = [[x * 111_000, y * 111_000] for x, y in r]  # metres, not degrees
    elif op == 4:
        coords[0] = [[x + 0.005, y] for x, y in r]  # overlaps the neighbour
    elif op == 5:
        coords[0] = r[:2]
    elif op == 6:
        coords.append(draw(ring()))  # a hole (maybe outside the shell)
    else:
        coords[0] = [[x, y] for x, y in reversed(r)]


TINY_REGIONS = tiny_json("regions.geojson")
TINY_TRACTS = tiny_json("census/tracts.geojson")


@st.composite
def feature_collection(draw: st.DrawFn, base: dict[str, Any], id_key: str | None) -> bytes:
    """A mutated copy of a FeatureCollection: one change to a geometry, a ring, the
    properties, a feature, the collection or the bytes."""
    doc = copy.deepcopy(base)
    feats = doc["features"]
    i = draw(st.integers(0, len(feats) - 1))
    what = draw(
        st.sampled_from(
            [
                "geometry",
                "ring",
                "ring",
                "properties",
                "property",
                "feature",
                "features",
                "type",
                "crs",
                "append",
                "raw",
                "truncate",
            ]
        )
    )
    if what == "geometry":
        feats[i]["geometry"] = draw(geometry())
    elif what == "ring":
        _ring_op(draw, feats[i]["geometry"]["coordinates"])
    elif what == "properties":
        feats[i]["properties"] = draw(JSON)
    elif what == "property":
        key = id_key if id_key and draw(st.booleans()) else draw(TEXT)
        odd_ids = st.sampled_from(["r1", " r0 ", " ", 7, 10**40, "x" * (MAX_REGION_ID + 1)])
        feats[i]["properties"][key] = draw(JSON | odd_ids)
    elif what == "feature":
        feats[i] = draw(JSON)
    elif what == "features":
        doc["features"] = draw(JSON)
    elif what == "type":
        doc["type"] = draw(TEXT | JSON)
    elif what == "crs":
        names = st.sampled_from(
            ["EPSG:4326", "urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:3857", "EPSG:999999", ""]
        )
        doc["crs"] = draw(
            st.builds(lambda n: {"type": "name", "properties": {"name": n}}, names | JSON) | JSON
        )
    elif what == "append":
        feats.append({"type": "Feature", "properties": draw(JSON), "geometry": draw(geometry())})
    raw = dumps(doc)
    if what == "raw":
        return draw(RAW_JSON)
    if what == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    return raw


NUMBER_CELLS = st.one_of(
    NEAR_X.map(repr),
    NEAR_Y.map(repr),
    st.floats().map(repr),
    st.sampled_from(
        ["nan", "inf", "-inf", "1e999", "-1e999", "1_0", "0x1A", "١٢", "1,5", " 10.0 ", "+.5e1"]
    ),
)
CELLS = st.one_of(
    NUMBER_CELLS,
    TEXT,
    st.sampled_from(
        [
            "r0",
            "r5",
            "r99",
            "remote",
            "street",
            "REMOTE",
            "aerial",
            "images/remote_0.png",
            "images/street_0.jpg",
            "../images/remote_0.png",
            "/etc/passwd",
            "images",
            "images/",
            "images/./remote_1.png",
            "images\\remote_2.png",
            "C:\\x.png",
            "a" * 300 + ".png",
            "a/" * 2100 + "x.png",
            "images/remote_0.png\x00",
            'a"b',
            '"',
            "x\ny",
        ]
    ),
)
HEADERS = {
    "pois.csv": ["poi_id", "lon", "lat", "name", "category", "text"],
    "trips.csv": ["origin_lon", "origin_lat", "dest_lon", "dest_lat", "departure_time"],
    "images.csv": ["path", "kind", "lon", "lat", "heading"],
    "indicators.csv": ["region_id", "population_density", "crime"],
}


@st.composite
def csv_file(draw: st.DrawFn, name: str) -> bytes:
    """A mutated copy of one of the tiny bundle's CSV files."""
    text = (TINY / name).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    what = draw(
        st.sampled_from(
            [
                "cell",
                "cell",
                "row",
                "row",
                "raw row",
                "header",
                "bytes",
                "encoding",
                "bom",
                "truncate",
                "newlines",
                "huge",
                "empty",
            ]
        )
    )
    if what == "cell":
        r = draw(st.integers(1, len(rows) - 1))
        c = draw(st.integers(0, len(rows[r]) - 1))
        rows[r][c] = draw(CELLS)
    elif what == "row":
        rows.insert(draw(st.integers(1, len(rows))), draw(st.lists(CELLS, max_size=8)))
    elif what == "raw row":
        row = ",".join(draw(st.lists(CELLS, max_size=8)))
        return (text + row + draw(st.sampled_from(["", "\n"]))).encode("utf-8", "surrogatepass")
    elif what == "header":
        pool = st.sampled_from([*HEADERS[name], "lon", "x", "", " lon ", "region_id"]) | TEXT
        rows[0] = draw(st.lists(pool, max_size=8))
    elif what == "bytes":
        return draw(st.binary(max_size=200))
    elif what == "encoding":
        enc = draw(st.sampled_from(["latin-1", "utf-16", "cp1252", "utf-8-bad"]))
        if enc == "utf-8-bad":
            data = text.encode()
            at = draw(st.integers(0, len(data)))
            return (
                data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
            )
        return text.encode(enc, "replace")
    elif what == "bom":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf"])) + text.encode()
    elif what == "truncate":
        data = text.encode()
        return data[: draw(st.integers(0, len(data) - 1))]
    elif what == "newlines":
        return text.replace("\n", draw(st.sampled_from(["\r", "\r\n", "\n\n"]))).encode()
    elif what == "huge":
        r = draw(st.integers(1, len(rows) - 1))
        rows[r][draw(st.integers(0, len(rows[r]) - 1))] = "9" * 140_000
    elif what == "empty":
        return draw(st.sampled_from([b"", b"\n", b",,,\n", b'"']))
    return csv_text(rows).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def edited(fresh_bundle: Callable[[], Any]) -> Iterator[Callable[[dict[str, bytes | None]], Any]]:
    """A context manager over one shared copy of the tiny bundle: writes the given files
    (None removes one) and puts the originals back afterwards. Cheaper than a copy per case."""
    with fresh_bundle() as root:

        @contextmanager
        def edit(changes: dict[str, bytes | None]) -> Iterator[Path]:
            saved = {n: (root / n).read_bytes() if (root / n).exists() else None for n in changes}
            try:
                for name, data in changes.items():
                    if data is None:
                        (root / name).unlink(missing_ok=True)
                    else:
                        (root / name).write_bytes(data)
                yield root
            finally:
                for name, data in saved.items():
                    if data is None:
                        (root / name).unlink(missing_ok=True)
                    else:
                        (root / name).write_bytes(data)

        yield edit


def _storable(text: str) -> bool:
    return re.search("[\x00\ud800-\udfff]", text) is None


def assert_storable(b: Bundle) -> None:
    """What read_bundle accepts, the store can hold (PostgreSQL is the strict one)."""
    assert b.city.name and len(b.city.name) <= MAX_NAME and _storable(b.city.name)
    assert len(b.city.crs) <= MAX_CRS_NAME
    json.dumps(b.city.meta, allow_nan=False, ensure_ascii=False).encode()  # finite, UTF-8
    assert "\\u0000" not in json.dumps(b.city.meta)
    ids = [r.region_id for r in b.regions]
    assert len(set(ids)) == len(ids) and b.regions
    for r in b.regions:
        assert 0 < len(r.region_id) <= MAX_REGION_ID and _storable(r.region_id)
        assert r.geom.geom_type == "MultiPolygon" and r.geom.is_valid and not r.geom.is_empty
    for p in b.pois:
        assert len(p.poi_id) <= MAX_NAME and len(p.category) <= MAX_NAME
        assert all(_storable(t) for t in (p.poi_id, p.name, p.category, p.text))
        assert math.isfinite(p.lon) and math.isfinite(p.lat)
    root = b.root.resolve()
    for im in b.images:
        assert (root / im.path).resolve().is_relative_to(root), im.path
    for values in b.indicators.values():
        assert all(len(n) <= MAX_NAME and math.isfinite(v) for n, v in values.items())
    for layer in b.census:
        assert len(layer.name) <= MAX_NAME and _storable(layer.name)
        for _, _, props in layer.features:
            json.dumps(props, allow_nan=False, ensure_ascii=False).encode()
            assert "\\u0000" not in json.dumps(props)


def check_read(root: Path, files: set[str], *, line: bool = False) -> Bundle | BundleError:
    """Read a bundle: it succeeds (and is storable) or fails with a BundleError naming one of
    ``files``; nothing else may escape (hypothesis reports it with the input that did it)."""
    try:
        b = read_bundle(root, show_progress=False)
    except BundleError as exc:
        assert exc.file in files, (exc.file, str(exc))
        msg = str(exc)
        assert msg.startswith(exc.file) and "\n" not in msg and len(msg) < 1000, msg
        assert exc.line is None or (isinstance(exc.line, int) and exc.line >= 1), exc.line
        if line:
            assert exc.line is not None or "line" not in exc.reason, msg
        event(f"refused: {exc.file}")  # --hypothesis-show-statistics shows the mix
        return exc
    event(f"read, {b.report.total()} problems reported" if b.report.total() else "read cleanly")
    assert_storable(b)
    for p in b.report.listed:
        assert p.file in FILES or p.file.startswith("census/"), p
        assert "\n" not in p.reason, p
    return b


# ---------------------------------------------------------------------------- the fuzz tests


@cases(300)
@given(
    content=st.one_of(
        st.builds(
            lambda key, value: {**TINY_CITY, key: value},
            st.sampled_from(["name", "crs", "h3_resolution", "source", "\x00", "\ud800"]),
            JSON,
        ).map(dumps),
        st.builds(
            lambda crs: {**TINY_CITY, "crs": crs},
            st.sampled_from(
                [
                    "EPSG:3857",
                    "EPSG:4978",
                    "EPSG:5703",
                    "EPSG:4326+5703",
                    "EPSG:32632",
                    "+proj=geocent +datum=WGS84",
                    "+proj=longlat +a=1",
                    'ENGCRS["x",EDATUM["y"],CS[Cartesian,2],AXIS["x",east,ORDER[1],'
                    'LENGTHUNIT["m",1]],AXIS["y",north,ORDER[2],LENGTHUNIT["m",1]]]',
                    "urn:ogc:def:crs:OGC:1.3:CRS84",
                    "OGC:CRS84",
                    "EPSG:999999",
                    "\x00",
                    "x" * 5000,
                    geo.WGS84.to_wkt(),
                    "+proj=longlat +datum=WGS84 +no_defs",
                ]
            )
            | TEXT,
        ).map(dumps),
        st.builds(
            lambda key: {k: v for k, v in TINY_CITY.items() if k != key},
            st.sampled_from(list(TINY_CITY)),
        ).map(dumps),
        JSON.map(dumps),
        RAW_JSON,
    )
)
def test_city_json_fuzz(edited: Callable[..., Any], content: bytes) -> None:
    with edited({"city.json": content}) as root:
        # another CRS changes how every other file reads: any file may be the one at fault
        check_read(root, set(FILES))


@cases(400)
@given(content=feature_collection(TINY_REGIONS, "region_id"))
def test_regions_geojson_fuzz(edited: Callable[..., Any], content: bytes) -> None:
    with edited({"regions.geojson": content}) as root:
        check_read(root, {"regions.geojson"})


@st.composite
def boundary_file(draw: st.DrawFn) -> tuple[bytes, Any]:
    """A boundary.geojson (small boxes, broken shapes, the whole world) and an h3_resolution
    for city.json (None: left out)."""
    feats = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.integers(0, 5))
        if kind < 3:
            geom: Any = {
                "type": "Polygon",
                "coordinates": [box_ring(draw(NEAR_X), draw(NEAR_Y), draw(st.floats(1e-6, 0.03)))],
            }
        elif kind == 3:
            geom = draw(geometry())
        elif kind == 4:
            geom = {
                "type": "Polygon",
                "coordinates": [
                    draw(
                        st.sampled_from(
                            [
                                box_ring(-179.0, -89.0, 178.0),  # half the world
                                [[170, 80], [-170, 80], [-170, 85], [170, 85], [170, 80]],
                                [[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]],
                            ]
                        )
                    )
                ],
            }
        else:
            geom = draw(JSON)
        feats.append({"type": "Feature", "properties": {}, "geometry": geom})
    doc: Any = {"type": "FeatureCollection", "features": feats}
    if draw(st.integers(0, 9)) == 0:
        doc = draw(JSON)
    res = draw(st.sampled_from([None, 0, 5, 7, 8, 8, 8, 9]))
    return dumps(doc), res


@cases(200)
@given(case=boundary_file())
def test_boundary_geojson_fuzz(edited: Callable[..., Any], case: tuple[bytes, Any]) -> None:
    content, res = case
    city = {k: v for k, v in TINY_CITY.items() if k != "h3_resolution"}
    if res is not None:
        city["h3_resolution"] = res
    changes = {"regions.geojson": None, "boundary.geojson": content, "city.json": dumps(city)}
    with edited(changes) as root, pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_module, "MAX_H3_CELLS", 5_000)  # the same check, sooner
        got = check_read(root, {"boundary.geojson"})
        if isinstance(got, Bundle):
            assert all(r.h3_cell == r.region_id for r in got.regions)


@cases(250)
@given(
    content=feature_collection(TINY_TRACTS, None),
    extra=st.sampled_from(["", "dir", "long", "not-utf8", "second", "empty"]),
)
def test_census_geojson_fuzz(fresh_bundle: Callable[[], Any], content: bytes, extra: str) -> None:
    with fresh_bundle() as root:
        (root / "census" / "tracts.geojson").write_bytes(content)
        files = {"census/tracts.geojson"}
        if extra == "dir":
            (root / "census" / "folder.geojson").mkdir()
        elif extra == "long":
            long = "t" * 240 + ".geojson"
            (root / "census" / long).write_bytes(dumps(TINY_TRACTS))
            files.add(f"census/{long}")
        elif extra == "not-utf8":
            odd = b"\xff\xfe.geojson"
            os.close(os.open(os.fsencode(root / "census") + b"/" + odd, os.O_CREAT))
            files.add("census/" + os.fsdecode(odd))
        elif extra == "second":
            (root / "census" / "zones.geojson").write_bytes(content)
            files.add("census/zones.geojson")
        elif extra == "empty":
            (root / "census" / "empty.geojson").write_bytes(b"")
            files.add("census/empty.geojson")
        check_read(root, files)


@pytest.mark.parametrize("name", list(HEADERS))
@cases(300)
@given(data=st.data())
def test_csv_fuzz(edited: Callable[..., Any], name: str, data: st.DataObject) -> None:
    content = data.draw(csv_file(name), label=name)
    with edited({name: content}) as root:
        check_read(root, {name}, line=True)


@st.composite
def image_change(draw: st.DrawFn) -> tuple[str, str, bytes]:
    target = draw(
        st.sampled_from(
            [f"images/remote_{i}.png" for i in range(4)]
            + [f"images/street_{i}.jpg" for i in range(2)]
        )
    )
    op = draw(
        st.sampled_from(
            [
                "bytes",
                "truncate",
                "empty",
                "magic",
                "rename",
                "swap",
                "directory",
                "link inside",
                "link outside",
                "link dangling",
                "link loop",
                "folder link outside",
                "fifo",
            ]
        )
    )
    data = b""
    if op == "bytes":
        data = draw(st.binary(max_size=300))
    elif op == "truncate":
        raw = (TINY / target).read_bytes()
        data = raw[: draw(st.integers(0, len(raw) - 1))]
    elif op == "magic":
        data = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"]))
        data += draw(st.binary(max_size=100))
    return target, op, data


@cases(200)
@given(change=image_change())
def test_image_files_fuzz(fresh_bundle: Callable[[], Any], change: tuple[str, str, bytes]) -> None:
    target, op, data = change
    with fresh_bundle() as root:
        path = root / target
        if op in ("bytes", "truncate", "empty", "magic"):
            path.write_bytes(data)
        elif op == "rename":
            path.rename(path.with_suffix(".gif"))
        elif op == "swap":  # a PNG saved under a .jpg name and back
            other = root / "images" / ("street_0.jpg" if path.suffix == ".png" else "remote_0.png")
            a, b = path.read_bytes(), other.read_bytes()
            path.write_bytes(b)
            other.write_bytes(a)
        elif op == "directory":
            path.unlink()
            path.mkdir()
        elif op.startswith("link"):
            path.unlink()
            dest = {
                "link inside": "remote_3.png",
                "link outside": str(TINY / target),
                "link dangling": "no-such-file.png",
                "link loop": path.name,
            }[op]
            path.symlink_to(dest)
        elif op == "folder link outside":
            shutil.rmtree(root / "images")
            (root / "images").symlink_to(TINY / "images", target_is_directory=True)
        elif op == "fifo":
            path.unlink()
            os.mkfifo(path)
        b = check_read(root, {"images.csv"})
        assert isinstance(b, Bundle)  # an image problem is never fatal
        skipped = [p.reason for p in b.report.listed if p.file == "images.csv"]
        if "outside" in op:
            assert any("stay inside it" in r for r in skipped), skipped
