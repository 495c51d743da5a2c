"""Hostile CLI input, generated: property-based fuzzing (hypothesis) of the CLI's points CSV
reader and of its query options.

* ``cli.csvfiles.read_points_csv`` gives valid points or raises a ``MuseclError`` that is a
  ``ValueError``, with a one-line message naming the file.
* the CLI (``musecl similar --bbox/--near/--polygon/--point``, ``musecl features --points``)
  exits 0, 1 or 2, never with a traceback, and an error is one ``Error: ...`` line.

Settings, shared strategies and fixtures: tests/fuzzing.py. Cases per test:

    test_read_points_csv_fuzz ...................... 400
    test_cli_similar_fuzz .......................... 300
    test_cli_features_points_fuzz .................. 100
    total .......................................... 800

A defect of ``musecl_store/api.py`` that these tests found (undecodable or oversized points
files) is fixed and pinned by ``test_read_points_csv_refuses_any_file_with_an_input_error``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from musecl_store import geo
from musecl_store.cli import main
from musecl_store.cli.csvfiles import read_points_csv
from musecl_store.errors import MuseclError
from tests.fuzzing import (
    COORD_TOKEN,
    NEAR_X,
    NEAR_Y,
    POLYGON_TEXT,
    TEXT,
    assert_project_error,
    cases,
    csv_text,
)

# ---------------------------------------------------------------------------- points files


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
    text = csv_text([header, *rows])
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
