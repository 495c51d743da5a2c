"""Hostile input, generated: property-based fuzzing (hypothesis) of everything that parses
what a user hands the store.

The properties:

* ``read_bundle`` reads a bundle or raises :class:`BundleError` whose ``.file`` names the file
  at fault (the mutated one; any bundle file for city.json, whose CRS changes how the others
  read), with ``.line`` a positive row or feature number where it has one, and a one-line
  message that starts with the file's name. Nothing else ever escapes. What it does read, the
  store can hold: no NUL or lone surrogate in stored text, names within the column limits,
  finite JSON, and no image file outside the bundle (a symbolic link that leaves the bundle
  is refused like a ``..`` path).
* ``search.parse_polygon``, ``geo.coordinates``, ``cli.csvfiles.read_points_csv``,
  ``TrainConfig.from_dict`` / ``from_file``, ``search.Query`` vectors and
  ``Store.similar(vector=...)`` give a valid result or raise a ``MuseclError`` that is a
  ``ValueError``, with a one-line message naming the argument, file or line.
* the CLI (``musecl similar --bbox/--near/--polygon/--point``, ``musecl features --points``)
  exits 0, 1 or 2, never with a traceback, and an error is one ``Error: ...`` line.

Every test is derandomized (a fixed seed, no example database), so CI runs the same cases;
``MUSECL_FUZZ_SCALE=20`` runs twenty times as many, new ones on every run (a bug hunt).
Cases per test (``max_examples``; hypothesis stops earlier only if it runs out of distinct
inputs):

    test_city_json_fuzz ............................ 300
    test_regions_geojson_fuzz ...................... 400
    test_boundary_geojson_fuzz ..................... 200
    test_census_geojson_fuzz ....................... 250
    test_csv_fuzz[pois.csv, trips.csv, images.csv,
                  indicators.csv] .................. 4 x 300
    test_image_files_fuzz .......................... 200
    test_parse_polygon_fuzz ........................ 1000
    test_coordinates_fuzz .......................... 1000
    test_read_points_csv_fuzz ...................... 400
    test_train_config_from_dict_fuzz ............... 800
    test_train_config_from_file_fuzz ............... 300
    test_query_vector_fuzz ......................... 1000
    test_store_similar_vector_fuzz ................. 150
    test_cli_similar_fuzz .......................... 300
    test_cli_features_points_fuzz .................. 100
    total .......................................... 7600

plus a few example tests (symbolic links, the store's limits). The whole file takes about
30-40 s on two CPU cores.

Two defects of ``musecl_store/api.py`` that these tests found (undecodable or oversized
points files, and point/vector values converted before they were checked) are fixed and
pinned by ``test_read_points_csv_refuses_any_file_with_an_input_error`` and
``test_store_similar_refuses_non_numeric_vectors_with_a_project_error``.
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
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sqlalchemy import select

import musecl_store
from musecl_store import geo
from musecl_store.bundle import reader as bundle_module
from musecl_store.bundle.reader import MAX_CRS_NAME, MAX_NAME, MAX_REGION_ID, Bundle, read_bundle
from musecl_store.cli import main
from musecl_store.cli.csvfiles import read_points_csv
from musecl_store.errors import BundleError, MuseclError
from musecl_store.search.filters import SearchError, parse_polygon
from musecl_store.search.query import Query, query_vector
from tests.conftest import BUNDLES
from training.config import ConfigError, TrainConfig

TINY = BUNDLES / "tiny"
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

# MUSECL_FUZZ_SCALE=20 runs 20 times the cases, with fresh random ones on each run: a bug
# hunt, not CI (which runs the fixed, derandomized cases).
SCALE = float(os.environ.get("MUSECL_FUZZ_SCALE", "1"))
FUZZ = settings(
    deadline=None,
    derandomize=SCALE == 1,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def cases(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, round(n * SCALE)))


# ---------------------------------------------------------------------------- strategies

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "é",
        "東京",
        "\n",
        "\r\n",
        '"',
        "'",
        "\\",
        ",",
        "null",
        "NaN",
        "1e999",
        "r0",
        "EPSG:4326",
        "x" * 250,
        "\u202e",
        "\ufeff",
    ]
)
TEXT = st.one_of(st.text(max_size=12), ODD_TEXT)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included
    st.sampled_from([0, -1, 8, 15, 16, -0.0, 1e308, 2**63, 10**30]),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=10,
)


def dumps(value: Any) -> bytes:
    """JSON as a hostile writer makes it: NaN and Infinity literals, escaped surrogates."""
    return json.dumps(value, allow_nan=True).encode()


RAW_JSON = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"\xef\xbb\xbf{}",
            b"[" * 5000 + b"]" * 5000,
            b'{"name": "x", "h3_resolution": ' + b"9" * 5000 + b"}",
            b'{"name": "x", "h3_resolution": 1e400}',
            b'{"name": "x", "h3_resolution": NaN}',
            b'{"name": "x", "h3_resolution": -Infinity}',
            b'{"name": "\\ud800"}',
            b'{"name": "a\\u0000b"}',
            b'{"name": "caf\xe9"}',
            b"\xff\xfe{\x00}\x00",
            b'{"name": "x",}',
            b"null",
        ]
    ),
)

NEAR_X = st.floats(9.99, 10.04)
NEAR_Y = st.floats(49.99, 50.03)
WILD = st.one_of(
    st.floats(),
    st.sampled_from([180.0, -180.0, 90.0, -90.0, 180.5, 1e308, -1e308, 1e-300]),
    st.integers(-(10**30), 10**30),
    TEXT,
    st.none(),
    st.booleans(),
)


@st.composite
def position(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    if kind < 7:
        return [draw(NEAR_X), draw(NEAR_Y)]
    if kind == 7:
        return [draw(NEAR_X), draw(NEAR_Y), draw(WILD)]
    if kind == 8:
        return draw(st.lists(WILD, max_size=4))
    return draw(WILD)


@st.composite
def ring(draw: st.DrawFn) -> list[Any]:
    """Mostly a small ring near the tiny city, often closed, sometimes broken."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.lists(position(), max_size=6))
    x, y = draw(NEAR_X), draw(NEAR_Y)
    n = draw(st.integers(1, 6))
    pts: list[Any] = [
        [x + draw(st.floats(-0.015, 0.015)), y + draw(st.floats(-0.015, 0.015))] for _ in range(n)
    ]
    if draw(st.integers(0, 4)):
        pts.append(list(pts[0]))  # closed
    if draw(st.integers(0, 3)) == 0:
        pts[draw(st.integers(0, len(pts) - 1))] = draw(position())
    return pts


def polygon_coords() -> st.SearchStrategy[Any]:
    return st.lists(ring(), min_size=0, max_size=3)


GEOM_TYPES = st.sampled_from(
    ["Polygon", "MultiPolygon", "Point", "LineString", "GeometryCollection", "polygon", ""]
)


@st.composite
def geometry(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    if kind < 4:
        return {"type": "Polygon", "coordinates": draw(polygon_coords())}
    if kind < 6:
        return {
            "type": "MultiPolygon",
            "coordinates": draw(st.lists(polygon_coords(), max_size=3)),
        }
    if kind == 6:
        return {"type": draw(GEOM_TYPES | TEXT), "coordinates": draw(JSON)}
    if kind == 7:
        return {
            "type": "GeometryCollection",
            "geometries": draw(st.lists(st.just({"type": "Polygon"}) | JSON, max_size=2)),
        }
    if kind == 8:
        return {"type": "Polygon", "coordinates": draw(WILD | st.lists(WILD, max_size=3))}
    return draw(JSON)


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


def _load(name: str) -> Any:
    return json.loads((TINY / name).read_text(encoding="utf-8"))


TINY_REGIONS = _load("regions.geojson")
TINY_TRACTS = _load("census/tracts.geojson")
TINY_CITY = _load("city.json")


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


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


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
    return _csv_text(rows).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------- the bundle reader


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fresh_bundle(scratch: Path) -> Callable[[], Any]:
    """A context manager: a fresh copy of the tiny bundle, removed afterwards."""

    @contextmanager
    def make() -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(dir=scratch))
        root = work / "bundle"
        shutil.copytree(TINY, root)
        try:
            yield root
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return make


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


def _box(x: float, y: float, size: float) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


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
                "coordinates": [_box(draw(NEAR_X), draw(NEAR_Y), draw(st.floats(1e-6, 0.03)))],
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
                                _box(-179.0, -89.0, 178.0),  # half the world
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


# ---------------------------------------------------------------------------- symbolic links


@pytest.mark.parametrize(
    "name",
    [
        "city.json",
        "regions.geojson",
        "pois.csv",
        "trips.csv",
        "images.csv",
        "indicators.csv",
        "census/tracts.geojson",
    ],
)
def test_a_bundle_file_linked_from_outside_is_refused(
    fresh_bundle: Callable[[], Any], name: str
) -> None:
    with fresh_bundle() as root:
        (root / name).unlink()
        (root / name).symlink_to(TINY / name)  # the same bytes, but outside the bundle
        with pytest.raises(BundleError, match=r"symbolic link .* outside the bundle") as err:
            read_bundle(root)
        assert err.value.file == name


def test_a_folder_linked_from_outside_is_refused(fresh_bundle: Callable[[], Any]) -> None:
    with fresh_bundle() as root:
        shutil.rmtree(root / "census")
        (root / "census").symlink_to(TINY / "census", target_is_directory=True)
        with pytest.raises(BundleError, match="outside the bundle") as err:
            read_bundle(root)
        assert err.value.file == "census/tracts.geojson"


def test_links_that_stay_inside_the_bundle_are_read(fresh_bundle: Callable[[], Any]) -> None:
    with fresh_bundle() as root:
        (root / "data").mkdir()
        (root / "pois.csv").rename(root / "data" / "pois.csv")
        (root / "pois.csv").symlink_to("data/pois.csv")
        (root / "images" / "remote_0.png").unlink()
        (root / "images" / "remote_0.png").symlink_to("remote_1.png")
        b = read_bundle(root)
        assert len(b.pois) == 15 and len(b.images) == 6 and b.report.total() == 0


def test_an_image_linked_from_outside_is_skipped_like_a_dotdot_path(
    fresh_bundle: Callable[[], Any],
) -> None:
    with fresh_bundle() as root:
        (root / "images" / "remote_0.png").unlink()
        (root / "images" / "remote_0.png").symlink_to(TINY / "images" / "remote_0.png")
        with (root / "images.csv").open("a") as f:
            f.write("../secret.png,remote,10.005,50.005,\n")
        b = read_bundle(root)
        assert sorted(im.path for im in b.images) == [
            "images/remote_1.png",
            "images/remote_2.png",
            "images/remote_3.png",
            "images/street_0.jpg",
            "images/street_1.jpg",
        ]
        by_kind = {kind: n for (f, kind, _), n in b.report.counts.items() if f == "images.csv"}
        assert by_kind == {"image path leaves the bundle": 2}
        reasons = sorted(str(p) for p in b.report.listed)
        assert re.search(
            r"images\.csv:2: path 'images/remote_0\.png' must be relative to the "
            r"bundle and stay inside it \(it is a symbolic link to .*\)",
            reasons[0],
        )
        assert reasons[1].startswith("images.csv:8: path '../secret.png' must be relative")


# ---------------------------------------------------------------------------- the store's limits


@pytest.mark.parametrize(
    ("name", "edit", "match"),
    [
        ("city.json", lambda t: t.replace('"tiny"', '"ti\\u0000ny"'), r"name holds a NUL"),
        ("city.json", lambda t: t.replace('"tests"', '"\\udc80"'), r"source holds a lone"),
        ("city.json", lambda t: t.replace('"tests"', "NaN"), r"NaN is not valid JSON"),
        ("city.json", lambda t: t.replace('"tests"', "1e999"), r"too large for a double"),
        ("city.json", lambda t: t.replace('"tiny"', '"' + "n" * 201 + '"'), r"longer than 200"),
        ("regions.geojson", lambda t: t.replace('"r1"', '"r\\u00001"'), r":2: region_id .*NUL"),
        (
            "indicators.csv",
            lambda t: t.replace("crime", "c" * 201),
            r"indicators\.csv:1: indicator name .* longer than 200",
        ),
    ],
)
def test_what_the_store_cannot_hold_is_refused(
    fresh_bundle: Callable[[], Any], name: str, edit: Callable[[str], str], match: str
) -> None:
    with fresh_bundle() as root:
        (root / name).write_text(edit((root / name).read_text(encoding="utf-8")))
        with pytest.raises(BundleError, match=match) as err:
            read_bundle(root)
        assert err.value.file == name


def test_rows_the_store_cannot_hold_are_skipped(fresh_bundle: Callable[[], Any]) -> None:
    with fresh_bundle() as root:
        with (root / "pois.csv").open("a", encoding="utf-8") as f:
            f.write("p100,10.005,50.005,Nul\x00Name,cafe,\n")
            f.write(f"p101,10.005,50.005,Long,{'c' * 201},\n")
        b = read_bundle(root)
        assert len(b.pois) == 15
        assert [str(p) for p in b.report.listed] == [
            "pois.csv:21: name holds a NUL character; the store cannot hold it (skipped)",
            "pois.csv:22: category is longer than 200 characters; the store cannot hold it "
            "(skipped)",
        ]


def test_a_long_crs_name_is_stored_as_its_code(fresh_bundle: Callable[[], Any]) -> None:
    with fresh_bundle() as root:
        city = {**TINY_CITY, "crs": geo.WGS84.to_wkt()}
        (root / "city.json").write_text(json.dumps(city))
        assert read_bundle(root).city.crs == "EPSG:4326"


def test_a_boundary_tiled_too_finely_is_refused(fresh_bundle: Callable[[], Any]) -> None:
    with fresh_bundle() as root:
        (root / "regions.geojson").unlink()
        box = {"type": "Polygon", "coordinates": [_box(10.0, 50.0, 1.0)]}
        feature = {"type": "Feature", "properties": {}, "geometry": box}
        doc = {"type": "FeatureCollection", "features": [feature]}
        (root / "boundary.geojson").write_text(json.dumps(doc))
        (root / "city.json").write_text(json.dumps({**TINY_CITY, "h3_resolution": 15}))
        match = r"boundary\.geojson: tiling .* resolution 15 would make about [\d,]+ regions"
        with pytest.raises(BundleError, match=match):
            read_bundle(root)


# ---------------------------------------------------------------------------- argument parsers


def assert_project_error(exc: BaseException, *words: str, limit: int | None = 1000) -> None:
    """A MuseclError that is a ValueError, one line (of at most ``limit`` characters),
    naming one of ``words``."""
    assert isinstance(exc, MuseclError) and isinstance(exc, ValueError), repr(exc)
    msg = str(exc)
    assert msg and "\n" not in msg and (limit is None or len(msg) < limit), msg
    if words:
        assert any(w in msg for w in words), msg


WKT_NUM = st.one_of(
    NEAR_X.map(repr),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "180", "-180", "91", "x", ""]),
)


@st.composite
def wkt_text(draw: st.DrawFn) -> str:
    def ring_text() -> str:
        pts = draw(st.lists(st.tuples(WKT_NUM, WKT_NUM), max_size=6))
        if pts and draw(st.booleans()):
            pts.append(pts[0])
        return "(" + ", ".join(f"{x} {y}" for x, y in pts) + ")"

    kind = draw(st.sampled_from(["POLYGON", "MULTIPOLYGON", "POINT", "LINESTRING", "polygon"]))
    body = "(" + ", ".join(ring_text() for _ in range(draw(st.integers(0, 2)))) + ")"
    if kind == "MULTIPOLYGON":
        body = f"({body})"
    return (
        draw(st.sampled_from(["", " ", "SRID=4326;"]))
        + kind
        + draw(st.sampled_from([" ", "", " EMPTY"]))
        + body
    )


POLYGON_TEXT = st.one_of(
    wkt_text(),
    geometry().map(json.dumps),
    geometry().map(lambda g: json.dumps({"type": "Feature", "geometry": g, "properties": {}})),
    st.builds(lambda x, y, s: shapely_box_wkt(x, y, s), NEAR_X, NEAR_Y, st.floats(-1, 1)),
    st.text(max_size=40),
    JSON.map(json.dumps),
    st.sampled_from(
        [
            "POLYGON((0 0, 1 0, 1 1, 0 0))",
            "POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))",  # a bow-tie: repaired
            "POLYGON((0 0, 1 0, 2 0, 0 0))",  # no area
            "POLYGON((0 0, 200 0, 200 1, 0 0))",
            "POLYGON EMPTY",
            "GEOMETRYCOLLECTION(POLYGON((0 0, 1 0, 1 1, 0 0)), POINT(5 5))",
            "[" * 3000,
            "{" * 3000,
            '{"type": "Feature"}',
            "x" * 5000,
            "POLYGON((0 0,\n1 0, 1 1, 0 0)",
        ]
    ),
)


def shapely_box_wkt(x: float, y: float, s: float) -> str:
    return f"POLYGON(({x} {y}, {x + s} {y}, {x + s} {y + s}, {x} {y + s}, {x} {y}))"


@cases(1000)
@given(text=POLYGON_TEXT)
def test_parse_polygon_fuzz(text: str) -> None:
    try:
        geom = parse_polygon(text)
    except SearchError as exc:
        assert_project_error(exc, "polygon")
        return
    assert geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_empty
    assert geom.is_valid and geom.area > 0
    x, y = geom.exterior.xy if geom.geom_type == "Polygon" else geom.geoms[0].exterior.xy
    assert geo.lonlat_ok(np.asarray(x), np.asarray(y)).all()


NAMES = st.sampled_from(["LON,LAT", "LON,LAT,KM", "MINLON,MINLAT,MAXLON,MAXLAT"])
COORD_TOKEN = st.one_of(
    st.floats(-200, 200).map(repr),
    st.integers(-200, 200).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "1e400", "1_0", "0x1", "١", " 1 ", "", " ", "+.5", "1e-400"]),
    st.text(max_size=4),
)


@cases(1000)
@given(
    names=NAMES,
    value=st.one_of(
        st.lists(COORD_TOKEN, max_size=5).map(",".join),
        st.text(max_size=20),
        st.lists(st.floats() | st.integers() | st.booleans() | TEXT | st.none(), max_size=5),
        st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(-10, 10)),
        hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=4)),
        st.none(),
        st.integers(),
        st.dictionaries(TEXT, st.integers(), max_size=2),
        st.binary(max_size=8),
    ),
)
def test_coordinates_fuzz(names: str, value: Any) -> None:
    try:
        got = geo.coordinates(value, names)
    except ValueError as exc:
        assert_project_error(exc, "expected", "longitude", "latitude", "distance")
        return
    wanted = names.split(",")
    assert len(got) == len(wanted) and all(isinstance(v, float) for v in got)
    for name, v in zip(wanted, got, strict=True):
        assert math.isfinite(v)
        if name.endswith("LON"):
            assert -180 <= v <= 180
        if name.endswith("LAT"):
            assert -90 <= v <= 90
        if name == "KM":
            assert v > 0


POINT_CELLS = st.one_of(
    st.floats(-180, 180).map(repr),
    st.floats(-90, 90).map(repr),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "", "abc", "1e400", "181", "-91", " 8.5 ", '"', "x\ny"]),
    st.text(max_size=5),
)


# points files with undecodable bytes and oversized fields too
POINTS_CSV_HOSTILE_BYTES = True


@st.composite
def points_csv(draw: st.DrawFn, *, hostile_bytes: bool = POINTS_CSV_HOSTILE_BYTES) -> bytes:
    header = draw(
        st.sampled_from([["lon", "lat"], ["name", "lon", "lat"], ["lat", "lon", "lon"]])
        | st.lists(st.sampled_from(["lon", "lat", "x", "", " lon"]) | TEXT, max_size=4)
    )
    rows = draw(st.lists(st.lists(POINT_CELLS, max_size=4), max_size=6))
    text = _csv_text([header, *rows])
    how = draw(st.integers(0, 9))
    if how == 0:
        text = "\ufeff" + text
    elif how == 1:
        text = text.replace("\n", "\r")
    elif how == 2:
        text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows)
    data = text.encode("utf-8", "surrogatepass" if hostile_bytes else "replace")
    if hostile_bytes and how == 3:
        data = draw(st.binary(max_size=100))
    if hostile_bytes and how == 4:
        data = data + b"\xff\xfe\n"
    return data


@cases(400)
@given(content=points_csv())
def test_read_points_csv_fuzz(scratch: Path, content: bytes) -> None:
    """See POINTS_CSV_HOSTILE_BYTES."""
    path = Path(tempfile.mkstemp(dir=scratch, suffix=".csv")[1])
    try:
        path.write_bytes(content)
        try:
            pts = read_points_csv(path)
        except MuseclError as exc:
            assert_project_error(exc, str(path))
            return
        assert all(geo.lonlat_ok(np.array([x]), np.array([y]))[0] for x, y in pts)
    finally:
        path.unlink()


@pytest.mark.parametrize(
    "content", [b"lon,lat\n1,2\n\xff,3\n", b"lon,lat\n" + b"1" * 200_000 + b",2\n"]
)
def test_read_points_csv_refuses_any_file_with_an_input_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "points.csv"
    path.write_bytes(content)
    with pytest.raises(MuseclError, match=r"points\.csv"):
        read_points_csv(path)


CONFIG_VALUES = st.one_of(
    JSON,
    st.sampled_from(
        [
            0,
            1,
            -1,
            2.5,
            float("nan"),
            float("inf"),
            10**30,
            True,
            "",
            "infonce",
            "triplet",
            "small",
            "poi",
            {"remote": "poi"},
            {"remote": "poi", "street": "mobility"},
            {"remote": None},
            {"aerial": "poi"},
            {"remote": 5},
        ]
    ),
)
CONFIG_KEYS = st.sampled_from([*TrainConfig.keys(), "epoch", "", "\x00"]) | TEXT


@cases(800)
@given(values=st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=4) | JSON)
def test_train_config_from_dict_fuzz(values: Any) -> None:
    try:
        cfg = TrainConfig.from_dict(values, "cfg.json")
    except ConfigError as exc:
        assert_project_error(exc, "cfg.json")
        return
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict(), allow_nan=False)  # storable as the model version's config


@cases(300)
@given(
    content=st.one_of(
        st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=3).map(dumps),
        RAW_JSON,
        st.just(b"{}"),
    ),
    override=st.sampled_from([None, 1, -3, "x"]),
)
def test_train_config_from_file_fuzz(scratch: Path, content: bytes, override: Any) -> None:
    path = Path(tempfile.mkstemp(dir=scratch, suffix=".json")[1])
    try:
        path.write_bytes(content)
        try:
            TrainConfig.from_file(path, epochs=override)
        except ConfigError as exc:
            assert_project_error(exc, str(path))
    finally:
        path.unlink()


def test_train_config_from_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        TrainConfig.from_file(tmp_path)
    (tmp_path / "latin.json").write_bytes(b'{"text_model": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"latin\.json: not valid UTF-8"):
        TrainConfig.from_file(tmp_path / "latin.json")


VECTORS = st.one_of(
    st.lists(st.floats(), max_size=10),
    st.lists(st.floats(-1e3, 1e3), min_size=8, max_size=8),
    st.lists(st.floats(-1e3, 1e3) | st.integers(-(2**70), 2**70), min_size=8, max_size=8),
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8),
    ),
    st.lists(JSON, max_size=4),
    st.lists(st.lists(st.floats(-1, 1), max_size=8), max_size=3),
    st.sampled_from([[0.0] * 8, [1e39] * 8, "abc", b"xyz", 5, 3.5, {"a": 1}, [], [[]]]),
)


@cases(1000)
@given(vector=VECTORS)
def test_query_vector_fuzz(vector: Any) -> None:
    try:
        q = Query(city="tiny", vector=vector)
    except SearchError as exc:
        assert_project_error(exc, "vector")
        return
    v = q.vector
    assert v is not None and v.ndim == 1 and v.size and np.isfinite(v).all() and np.any(v)
    np.testing.assert_array_equal(v, query_vector(vector))


# ---------------------------------------------------------------------------- a tiny store


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The tiny bundle in a SpatiaLite store with an active model version of random 8-d
    embeddings (no training): (database path, index folder)."""
    from musecl_store.ingest.apply import ingest_bundle
    from musecl_store.store import schema
    from musecl_store.store.engine import create_engine, transaction
    from musecl_store.store.tables import City, ModelVersion, Region
    from musecl_store.store.vectors import put_embeddings

    work = tmp_path_factory.mktemp("fuzz-store")
    path = work / "store.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect():
        pass  # initialises the SpatiaLite metadata
    schema.upgrade(engine)
    rng = np.random.default_rng(0)
    with transaction(engine) as s:
        ingest_bundle(s, TINY, show_progress=False)
        city_id = s.scalar(select(City.id).where(City.name == "tiny"))
        mv = ModelVersion(
            city_id=city_id, config={}, seed=0, data_revision=1, checkpoint_path="-", active=True
        )
        s.add(mv)
        s.flush()
        pks = list(s.scalars(select(Region.id).order_by(Region.region_id)))
        vecs = rng.normal(size=(len(pks), 8)).astype(np.float32)
        put_embeddings(s, mv.id, "fused", pks, vecs, revision=1)
    engine.dispose()
    yield str(path), work / "index"


@pytest.fixture(scope="module")
def tiny_api(tiny_store: tuple[str, Path]) -> Iterator[Any]:
    with musecl_store.open(tiny_store[0], index_dir=tiny_store[1]) as store:
        yield store


@cases(150)
@given(
    vector=st.one_of(
        st.lists(st.floats(), max_size=10),
        st.lists(st.floats(-1e3, 1e3), min_size=8, max_size=8),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int64]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8),
        ),
        st.sampled_from([[0.0] * 8, [1e39] * 8, [[0.5] * 8], [[0.5] * 4] * 2, [], [[]]]),
    )
)
def test_store_similar_vector_fuzz(tiny_api: Any, vector: Any) -> None:
    """Numeric vectors of any shape; non-numeric ones are an api.py bug (see
    test_store_similar_refuses_non_numeric_vectors_with_a_project_error)."""
    try:
        hits = tiny_api.similar("tiny", vector=vector, k=3)
    except MuseclError as exc:
        assert_project_error(exc, "vector")
        return
    assert 1 <= len(hits) <= 3 and hits.score.between(-1.0001, 1.0001).all()


@pytest.mark.parametrize("scale", [1e-310, 1e-30, 1.0, 1e37])
def test_a_vector_of_any_magnitude_finds_its_region(tiny_api: Any, scale: float) -> None:
    """Cosine is scale-free: float32 norms that overflow (or vanish) must not change it."""
    table = tiny_api.features("tiny")
    vec = table.drop(columns="region_id").to_numpy(dtype=np.float64)[2] * scale
    hits = tiny_api.similar("tiny", vector=vec, k=1)
    assert hits.region_id[0] == table.region_id[2] and hits.score[0] == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    "query", [{"vector": ["a"] * 8}, {"vector": [{}] * 8}, {"point": ("a", "b")}, {"point": (1,)}]
)
def test_store_similar_refuses_non_numeric_vectors_with_a_project_error(
    tiny_api: Any, query: dict[str, Any]
) -> None:
    with pytest.raises(MuseclError):
        tiny_api.similar("tiny", **query)


# ---------------------------------------------------------------------------- the CLI


def assert_clean_exit(result: Any) -> None:
    """Exit 0, or 1/2 with a one-line 'Error: ...' last; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception),
        result.output,
    )
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code:
        last = result.output.rstrip("\n").split("\n")[-1]
        assert last.startswith("Error: ") and len(last) < 800, result.output
        assert result.output.count("Error: ") == 1, result.output


SIMILAR_VALUES = {
    "--bbox": st.one_of(
        st.lists(COORD_TOKEN, max_size=5).map(",".join),
        st.builds(
            lambda x, y, s: f"{x},{y},{x + s},{y + s}", NEAR_X, NEAR_Y, st.floats(-0.05, 0.05)
        ),
    ),
    "--near": st.one_of(
        st.lists(COORD_TOKEN, max_size=4).map(",".join),
        st.builds(
            lambda x, y, km: f"{x},{y},{km}",
            NEAR_X,
            NEAR_Y,
            st.floats(-1, 5) | st.sampled_from([1e300, 5e-324, 0.0]),
        ),
    ),
    "--polygon": POLYGON_TEXT,
    "--point": st.one_of(
        st.lists(COORD_TOKEN, max_size=3).map(",".join),
        st.builds(lambda x, y: f"{x},{y}", NEAR_X, NEAR_Y),
    ),
}


@st.composite
def similar_args(draw: st.DrawFn) -> list[str]:
    option = draw(st.sampled_from(list(SIMILAR_VALUES)))
    value = draw(SIMILAR_VALUES[option])
    args = ["similar", "--city", "tiny", "-k", draw(st.sampled_from(["3", "1", "0", "x"]))]
    if option != "--point":
        args.append(draw(st.sampled_from(["r0", "r0", "r9", ""])))
    return [*args, f"{option}={value}", *draw(st.sampled_from([[], ["--json"], ["--geometry"]]))]


@cases(300)
@given(args=similar_args())
def test_cli_similar_fuzz(tiny_store: tuple[str, Path], args: list[str]) -> None:
    db, index = tiny_store
    result = CliRunner().invoke(main, ["--db", db, *args], env={"MUSECL_INDEX_DIR": str(index)})
    assert_clean_exit(result)


@cases(100)
@given(content=points_csv())
def test_cli_features_points_fuzz(
    tiny_store: tuple[str, Path], scratch: Path, content: bytes
) -> None:
    db, index = tiny_store
    path = Path(tempfile.mkstemp(dir=scratch, suffix=".csv")[1])
    try:
        path.write_bytes(content)
        result = CliRunner().invoke(
            main,
            ["--db", db, "features", "--city", "tiny", "--points", str(path)],
            env={"MUSECL_INDEX_DIR": str(index)},
        )
        assert_clean_exit(result)
    finally:
        path.unlink()
