"""What the fuzz modules share: hypothesis settings, strategies for hostile input, the check on
a refusal, and fixtures (a scratch folder, a fresh copy of the tiny bundle, a tiny store).
tests/conftest.py loads this module as a plugin, so the fixtures reach every test folder.

Every fuzz test is derandomized (a fixed seed, no example database), so CI runs the same cases;
``MUSECL_FUZZ_SCALE=20`` runs twenty times as many, new ones on every run (a bug hunt). Each
fuzz module lists its tests' cases (``max_examples``; hypothesis stops earlier only if it runs
out of distinct inputs):

    tests/bundle/test_fuzz_bundle.py ............... 2550
    tests/search/test_fuzz_search.py ............... 3000
    tests/cli/test_fuzz_cli.py ..................... 800
    tests/training/test_fuzz_config.py ............. 1100
    tests/api/test_fuzz_api.py ..................... 150
    total .......................................... 7600

plus a few example tests beside them (tests/bundle/test_links_and_limits.py: symbolic links and
the store's limits). Together they take about 30-40 s on two CPU cores.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import select

from musecl_store.errors import MuseclError
from tests.conftest import BUNDLES

TINY = BUNDLES / "tiny"

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
    """The fuzz settings, running ``n`` cases (times ``MUSECL_FUZZ_SCALE``)."""
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


# ---------------------------------------------------------------------------- the tiny bundle


def tiny_json(name: str) -> Any:
    """One of the tiny bundle's JSON files, parsed."""
    return json.loads((TINY / name).read_text(encoding="utf-8"))


TINY_CITY = tiny_json("city.json")


def box_ring(x: float, y: float, size: float) -> list[list[float]]:
    """A closed square ring with its lower left corner at (x, y)."""
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def csv_text(rows: list[list[str]]) -> str:
    """Rows as CSV text, ``\n`` line ends."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------------------- arguments


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


COORD_TOKEN = st.one_of(
    st.floats(-200, 200).map(repr),
    st.integers(-200, 200).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "1e400", "1_0", "0x1", "١", " 1 ", "", " ", "+.5", "1e-400"]),
    st.text(max_size=4),
)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the module's temporary files."""
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


@pytest.fixture(scope="session")
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
