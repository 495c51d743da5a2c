"""Bundles the reader must refuse or trim, by example (beside the fuzz tests of
test_fuzz_bundle.py): symbolic links that leave the bundle, and values the store cannot hold."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from musecl_store import geo
from musecl_store.bundle.reader import read_bundle
from musecl_store.errors import BundleError
from tests.fuzzing import TINY, TINY_CITY, box_ring

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
        box = {"type": "Polygon", "coordinates": [box_ring(10.0, 50.0, 1.0)]}
        feature = {"type": "Feature", "properties": {}, "geometry": box}
        doc = {"type": "FeatureCollection", "features": [feature]}
        (root / "boundary.geojson").write_text(json.dumps(doc))
        (root / "city.json").write_text(json.dumps({**TINY_CITY, "h3_resolution": 15}))
        match = r"boundary\.geojson: tiling .* resolution 15 would make about [\d,]+ regions"
        with pytest.raises(BundleError, match=match):
            read_bundle(root)
