"""Incremental re-embedding equals a full re-embed; untouched regions keep their revision."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from musecl_store.embedding.reembed import reembed
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding, Region
from musecl_store.store.vectors import load_embeddings

pytestmark = pytest.mark.slow


def edit_bundle(src: Path, dst: Path) -> set[str]:
    """Rename a POI in two regions and re-shoot one street view; returns the regions."""
    shutil.copytree(src, dst)
    import h3

    with (dst / "pois.csv").open(encoding="utf-8", newline="") as f:
        pois = list(csv.DictReader(f))
    regions = sorted({h3.latlng_to_cell(float(p["lat"]), float(p["lon"]), 8) for p in pois})[:2]
    for p in pois:
        if h3.latlng_to_cell(float(p["lat"]), float(p["lon"]), 8) in regions:
            p["name"] = "Brand New " + p["name"]
    with (dst / "pois.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(pois[0]))
        w.writeheader()
        w.writerows(pois)
    with (dst / "images.csv").open(newline="") as f:
        street = next(r for r in csv.DictReader(f) if r["kind"] == "street")
    Image.new("RGB", (64, 64), (250, 20, 200)).save(dst / street["path"])
    return {*regions, h3.latlng_to_cell(float(street["lat"]), float(street["lon"]), 8)}


def vectors(session, kind: str) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    ids, mat = load_embeddings(session, 1, kind)
    return dict(zip(ids, mat, strict=True))


def test_incremental_equals_full_and_leaves_the_rest_alone(
    backend, trained: str, demo_bundle: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    url = backend.clone(trained)
    engine = create_engine(url)
    edited = edit_bundle(demo_bundle, tmp_path / "edited")
    with transaction(engine) as s:
        nothing = reembed(s, "demo-3")
        assert nothing.revision is None and nothing.regions == []  # nothing changed yet
        ingest_bundle(s, tmp_path / "edited")
    with transaction(engine) as s:
        before = {k: vectors(s, k) for k in ("remote", "street", "poi", "fused")}
        revs_before = dict(
            s.execute(
                select(Region.region_id, Embedding.revision)
                .join(Embedding, Embedding.region_pk == Region.id)
                .where(Embedding.kind == "fused")
            ).all()
        )
    with transaction(engine) as s:
        result = reembed(s, "demo-3")
    assert set(result.regions) == edited
    assert result.recomputed["poi"] == 2 and result.recomputed["street"] == 1
    # every edited region's fused vector reads its POI texts or its street views
    assert result.recomputed["remote"] == 0 and result.recomputed["fused"] == len(edited)
    with transaction(engine) as s:
        after = {k: vectors(s, k) for k in ("remote", "street", "poi", "fused")}
        revs_after = dict(
            s.execute(
                select(Region.region_id, Embedding.revision)
                .join(Embedding, Embedding.region_pk == Region.id)
                .where(Embedding.kind == "fused")
            ).all()
        )
        again = reembed(s, "demo-3")
        assert again.regions == []  # caught up
    changed_fused = {
        r for r in after["fused"] if not np.array_equal(after["fused"][r], before["fused"][r])
    }
    assert changed_fused == edited
    for r, rev in revs_before.items():
        if r not in changed_fused:
            assert revs_after[r] == rev  # untouched regions keep their revision
    # the full re-embed with the same model, in a copy, gives the same vectors
    engine.dispose()  # nobody may be connected to a database that is copied
    full_url = backend.clone(url)
    full = create_engine(full_url)
    with transaction(full) as s:
        reembed(s, "demo-3", all_regions=True)
    with transaction(full) as s:
        reference = {k: vectors(s, k) for k in ("remote", "street", "poi", "fused")}
    for kind in reference:
        for r in edited:
            np.testing.assert_allclose(
                after[kind][r], reference[kind][r], atol=1e-5, err_msg=f"{kind} {r}"
            )
    full.dispose()


def test_cli_reembed_updates_the_index_and_reports_drift(
    backend, trained: str, demo_bundle: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from musecl_store.cli import main

    monkeypatch.setenv("MUSECL_INDEX_DIR", str(tmp_path / "idx"))
    url = backend.clone(trained)
    runner = CliRunner()
    first = json.loads(
        runner.invoke(main, ["--db", url, "reembed", "--city", "demo-3", "--json"]).stdout
    )
    assert first["revision"] is None and first["drift"] == []
    edited = edit_bundle(demo_bundle, tmp_path / "edited")
    assert runner.invoke(main, ["--db", url, "ingest", str(tmp_path / "edited")]).exit_code == 0
    out = runner.invoke(main, ["--db", url, "reembed", "--city", "demo-3", "--json"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.stdout)
    assert rep["regions"] == len(edited) and rep["index"]["revision"] == rep["revision"]
    assert rep["index"]["caught_up"] == rep["recomputed"]["fused"] and not rep["index"]["rebuilt"]
    moved = [d for d in rep["drift"] if d["cosine_distance"]]
    assert len(moved) == len(edited) and all(0 < d["cosine_distance"] <= 2 for d in moved)
    assert all(
        d["neighbours_kept"] is None or 0 <= d["neighbours_kept"] <= 10 for d in rep["drift"]
    )
    assert {d["region_id"] for d in rep["drift"]} == edited
    bad = runner.invoke(main, ["--db", url, "reembed", "--city", "demo-3", "--all", "--since", "3"])
    assert bad.exit_code == 2 and "at most one" in bad.output


def test_a_trip_edit_changes_only_the_fused_vectors_of_its_two_regions(
    backend, trained: str, demo_bundle: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Mobility reaches the fused vector (volumes and flow pattern), so new trips re-embed
    the regions at both ends: fused only, equal to a full re-embed."""
    import h3

    url = backend.clone(trained)
    engine = create_engine(url)
    dst = tmp_path / "trips"
    shutil.copytree(demo_bundle, dst)
    with (dst / "trips.csv").open(encoding="utf-8", newline="") as f:
        trips = list(csv.DictReader(f))
    a = trips[0]
    b = next(t for t in trips if t["dest_lon"] != a["origin_lon"])
    extra = {**a, "dest_lon": b["dest_lon"], "dest_lat": b["dest_lat"]}
    with (dst / "trips.csv").open("a", encoding="utf-8", newline="") as f:
        csv.DictWriter(f, fieldnames=list(trips[0])).writerows([extra] * 5)
    ends = {
        h3.latlng_to_cell(float(extra["origin_lat"]), float(extra["origin_lon"]), 8),
        h3.latlng_to_cell(float(extra["dest_lat"]), float(extra["dest_lon"]), 8),
    }
    with transaction(engine) as s:
        ingest_bundle(s, dst)
    with transaction(engine) as s:
        result = reembed(s, "demo-3")
        after = vectors(s, "fused")
    assert set(result.regions) == ends
    assert result.recomputed == {"remote": 0, "street": 0, "poi": 0, "fused": len(ends)}
    engine.dispose()
    full = create_engine(backend.clone(url))
    with transaction(full) as s:
        reembed(s, "demo-3", all_regions=True)
    with transaction(full) as s:
        reference = vectors(s, "fused")
    for r in ends:
        np.testing.assert_allclose(after[r], reference[r], atol=1e-5, err_msg=r)
    full.dispose()
