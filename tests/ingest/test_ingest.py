"""Ingest on both backends: counts read back, idempotency, the change log, atomicity."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from musecl_store.ingest import apply as ingest_mod
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.cities import city_info, list_cities
from musecl_store.store.engine import transaction
from musecl_store.store.tables import City, Poi, Region, RegionChange, Revision
from tests.conftest import snapshot


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_counts_read_back_match_the_bundle(engine, demo_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        summary = ingest_bundle(s, demo_bundle)
    assert summary.report.total() == 0
    with transaction(engine) as s:
        info = city_info(s, "demo-3")
    import h3

    boundary = json.loads((demo_bundle / "boundary.geojson").read_text())["features"][0]["geometry"]
    images = Counter(r["kind"] for r in rows(demo_bundle / "images.csv"))
    trips = rows(demo_bundle / "trips.csv")
    indicators = rows(demo_bundle / "indicators.csv")
    assert info["regions"] == len(h3.geo_to_cells(boundary, 8))
    assert info["pois"] == len(rows(demo_bundle / "pois.csv"))
    assert info["images"] == {"remote": images["remote"], "street": images["street"]}
    assert info["trips"] == info["trips_out"] == info["trips_in"] == len(trips)
    for name in ["population_density", "housing_density", "crime", "poi_count"]:
        assert info["indicators"][name] == sum(1 for r in indicators if r[name] != "")
    tracts = json.loads((demo_bundle / "census" / "tracts.geojson").read_text())["features"]
    assert info["census_layers"] == {"tracts": len(tracts)}
    assert info["regions_with"]["street"] < info["regions"]  # some regions lack street views
    assert info["regions_with"]["trips"] < info["regions"]  # and some lack trips
    assert info["revision"] == info["store_revision"] == summary.revision


def test_reingest_changes_nothing(engine, demo_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        first = ingest_bundle(s, demo_bundle)
    before = snapshot(engine)
    with transaction(engine) as s:
        again = ingest_bundle(s, demo_bundle)
    assert not again.changed and again.regions["unchanged"] == first.regions["total"]
    assert snapshot(engine) == before


def edit_five_regions(src: Path, dst: Path) -> set[str]:
    """Copy a bundle and edit five regions, each in another modality or two."""
    shutil.copytree(src, dst)
    pois = rows(dst / "pois.csv")
    images = rows(dst / "images.csv")
    inds = rows(dst / "indicators.csv")
    import h3

    def region_of(lon: str, lat: str) -> str:
        return h3.latlng_to_cell(float(lat), float(lon), 8)

    by_region: dict[str, list[dict[str, str]]] = {}
    for p in pois:
        by_region.setdefault(region_of(p["lon"], p["lat"]), []).append(p)
    picked = sorted(by_region)[:3]
    for rid in picked[:2]:  # renamed POIs
        by_region[rid][0]["name"] = "Renamed " + by_region[rid][0]["name"]
    pois.remove(by_region[picked[2]][-1])  # a POI closed
    street = next(
        im
        for im in images
        if im["kind"] == "street" and region_of(im["lon"], im["lat"]) not in picked
    )
    street_region = region_of(street["lon"], street["lat"])
    from PIL import Image  # a street view re-shot: same path, new pixels

    Image.new("RGB", (64, 64), (1, 2, 3)).save(dst / street["path"])
    ind = next(r for r in inds if r["region_id"] not in {*picked, street_region} and r["crime"])
    ind["crime"] = str(float(ind["crime"]) + 1)
    for name, data in [("pois.csv", pois), ("indicators.csv", inds)]:
        with (dst / name).open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    return {*picked, street_region, ind["region_id"]}


def test_five_edited_regions_are_exactly_the_change_log(
    engine, demo_bundle: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        first = ingest_bundle(s, demo_bundle)
    edited = tmp_path / "edited"
    expected = edit_five_regions(demo_bundle, edited)
    assert len(expected) == 5
    with transaction(engine) as s:
        before = dict(s.execute(select(Region.region_id, Region.revision)).all())
        summary = ingest_bundle(s, edited)
    assert summary.changed and summary.regions["updated"] == 5
    with transaction(engine) as s:
        logged = s.execute(
            select(RegionChange.region_id, RegionChange.change, RegionChange.modalities).where(
                RegionChange.revision_id == summary.revision
            )
        ).all()
        after = dict(s.execute(select(Region.region_id, Region.revision)).all())
        n_pois = s.scalar(select(func.count()).select_from(Poi))
    assert {r for r, _, _ in logged} == expected
    assert {c for _, c, _ in logged} == {"updated"}
    mods = {r: set(m) for r, _, m in logged}
    assert sorted(mods.values(), key=sorted) == sorted(
        [{"poi"}, {"poi"}, {"poi"}, {"street"}, {"indicators"}], key=sorted
    )
    assert n_pois == first.counts["pois"] - 1
    for rid, rev in after.items():  # untouched regions keep their revision
        assert rev == (summary.revision if rid in expected else before[rid])


def test_removed_and_added_regions(engine, tiny_bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_bundle, changed)
    doc = json.loads((changed / "regions.geojson").read_text())
    doc["features"][5]["properties"]["region_id"] = "r5-new"  # r5 goes, r5-new comes
    (changed / "regions.geojson").write_text(json.dumps(doc))
    with transaction(engine) as s:
        summary = ingest_bundle(s, changed)
    assert summary.regions == {"added": 1, "updated": 2, "removed": 1, "unchanged": 3, "total": 6}
    with transaction(engine) as s:
        log = {
            r: (c, set(m))
            for r, c, m in s.execute(
                select(RegionChange.region_id, RegionChange.change, RegionChange.modalities).where(
                    RegionChange.revision_id == summary.revision
                )
            ).all()
        }
        # r5's three POIs now belong to r5-new, once each
        moved = s.execute(
            select(Region.region_id, func.count(Poi.id))
            .join(Poi, Poi.region_pk == Region.id)
            .where(Region.region_id.in_(["r5", "r5-new"]))
            .group_by(Region.region_id)
        ).all()
    assert log["r5"] == ("removed", set())
    assert log["r5-new"][0] == "added" and {"geometry", "poi"} <= log["r5-new"][1]
    assert log["r3"] == ("updated", {"mobility"})  # the r5 -> r3 trip now ends in r5-new
    assert log["r4"] == ("updated", {"mobility"})
    assert moved == [("r5-new", 3)]


def test_a_moved_bundle_updates_only_its_path(engine, tiny_bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_bundle, moved)
    with transaction(engine) as s:
        summary = ingest_bundle(s, moved)
        assert summary.changed and summary.changes == []
        assert s.scalar(select(City.source_path)) == str(moved.resolve())


def test_a_failure_while_writing_leaves_the_store_as_it_was(
    engine, tiny_bundle: Path, demo_bundle: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
    before = snapshot(engine)

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(ingest_mod, "_write_census", boom)
    with pytest.raises(RuntimeError, match="injected"), transaction(engine) as s:
        ingest_bundle(s, demo_bundle)  # regions, POIs, images ... were written, then this
    assert snapshot(engine) == before


def test_two_cities_live_side_by_side(engine, tiny_bundle: Path, demo_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        a = ingest_bundle(s, tiny_bundle)
        b = ingest_bundle(s, demo_bundle)
    with transaction(engine) as s:
        cities = list_cities(s)
        revs = list(s.scalars(select(Revision.id).order_by(Revision.id)))
    assert [c["city"] for c in cities] == ["demo-3", "tiny"]
    assert revs == [a.revision, b.revision] and b.revision > a.revision
