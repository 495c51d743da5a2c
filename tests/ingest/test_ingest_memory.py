"""Ingest in bounded memory: hashes pinned to the earlier, all-in-memory version, the
streamed read of regions.geojson against the whole-file read, and the write's memory not
growing with the city."""

from __future__ import annotations

import json
import shutil
import sys
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from musecl_store.bundle.reader import read_bundle
from musecl_store.errors import BundleError
from musecl_store.ingest.apply import ingest_bundle, write_bundle
from musecl_store.ingest.hashes import region_hashes
from musecl_store.store.engine import transaction
from musecl_store.store.tables import Poi, Region

ROOT = Path(__file__).resolve().parents[2]

# region_hashes of tests/bundles/tiny as the version before columnar reading computed them:
# a store made by it must see the same bundle as unchanged.
TINY_HASHES = {
    "r0": "26afa76978f874ce69e3cbe6afd867c7 fd251e16c0eacea819c22a0e57246a65 "
    "4755ae5d30f6c70877b776be2dfb3099 cae66941d9efbd404e4d88758ea67670 "
    "48403403a18c6ef582ffd44ea0ff08c2 1c50e5d676d70a624b389febb4dbc342",
    "r1": "672eb6d3fde238dc7027ca61b9e596d7 f12d11b6beef3981a22f006379a4f697 "
    "0170cd6695914d7c4d95e4f7d7b95c88 aa2dc34636db65e6c79e7ba14550221b "
    "4b98401d53e977910682446cec0a07fa 3f21a890369f255e15fa76f783192e42",
    "r2": "cb6c501bd3151bc04423f2e9f83b7cfb bfcce8edd6072987dc0e439355ca3170 "
    "5cacd8615d78e4a1d5d7085ef82e6342 1ea73fd826d41e55a106219f8827a7ee "
    "8236ba21f30146c8fc5cb8730f516698 a4504169add0c23dac87365164f42631",
    "r3": "e709bc61ad3de52462dd612a416c7b5a 54ff0db5aff2ba30592c50729a3dea2b "
    "b3a3b1a8611db75e94d7af4d144ec8cb cae66941d9efbd404e4d88758ea67670 "
    "1b7843e63247f8b2b618cd5a4af66be3 4b8c1452fa8271e27bd0346d0a7ccaed",
    "r4": "3b44d84b77841c72102a71e46a1c734f 1aa6d06295fc44771be23483d9861773 "
    "cae66941d9efbd404e4d88758ea67670 cae66941d9efbd404e4d88758ea67670 "
    "41c91858a55ca4e2c1a74892172eafab ce2d76b5dcd0bc1fa8866109fd541b54",
    "r5": "bba07d429fc4de41741dd3c5c6933ec4 af036bfec72e8e84c7b5943b7551be11 "
    "cae66941d9efbd404e4d88758ea67670 cae66941d9efbd404e4d88758ea67670 "
    "6289141d7b263634e13ae3f640de7197 da734066a0030c44b5680d9d0fce59e2",
}
MODALITIES = ["geometry", "poi", "remote", "street", "mobility", "indicators"]


def test_region_hashes_are_pinned(tiny_bundle: Path) -> None:
    b = read_bundle(tiny_bundle)
    hashes = region_hashes(b)
    got = {r.region_id: " ".join(hashes[i][m] for m in MODALITIES) for i, r in enumerate(b.regions)}
    assert got == TINY_HASHES


def test_stored_hashes_are_the_pinned_ones(engine: Engine, tiny_bundle: Path) -> None:
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
    cols = [getattr(Region, f"hash_{m}") for m in MODALITIES]
    with transaction(engine) as s:
        stored = {rid: " ".join(h) for rid, *h in s.execute(select(Region.region_id, *cols))}
        poi = s.execute(select(Poi.content_hash).where(Poi.poi_id == "p2")).scalar_one()
    assert stored == TINY_HASHES
    b = read_bundle(tiny_bundle)
    assert poi == next(p for p in b.pois if p.poi_id == "p2").content_hash


def _regions(path: Path) -> list[tuple[str, bytes]]:
    return [(r.region_id, r.wkb) for r in read_bundle(path).regions]


def test_oddly_laid_out_regions_file_reads_as_before(tmp_path: Path, tiny_bundle: Path) -> None:
    """ "features" before "type", a foreign member after it, a second "features": the file
    is read whole then, with json's rules (the last of a repeated key wins)."""
    want = _regions(tiny_bundle)
    doc = json.loads((tiny_bundle / "regions.geojson").read_text())
    for i, text in enumerate(
        [
            json.dumps({"features": doc["features"], "type": "FeatureCollection"}),
            json.dumps({"type": "FeatureCollection", "features": doc["features"], "x": [1]}),
            '{"type": "FeatureCollection", "features": [], "features": '
            + json.dumps(doc["features"])
            + "}",
            json.dumps(doc, indent=3),
        ]
    ):
        root = tmp_path / str(i)
        shutil.copytree(tiny_bundle, root)
        (root / "regions.geojson").write_text(text)
        assert _regions(root) == want, text[:80]


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        ("]}, 7", 3),  # extra data after the document
        ("]", 3),  # no closing brace
        ('], "crs": {"type": "name", "properties": {"name": "EPSG:3857"}}}', None),
    ],
)
def test_broken_regions_file_fails_as_before(
    tmp_path: Path, tiny_bundle: Path, tail: str, line: int | None
) -> None:
    doc = json.loads((tiny_bundle / "regions.geojson").read_text())
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    body = ",".join(json.dumps(f) for f in doc["features"])
    (root / "regions.geojson").write_text(
        '{"type": "FeatureCollection", "features": [\n' + body + "\n" + tail
    )
    with pytest.raises(BundleError) as err:
        read_bundle(root)
    assert err.value.file == "regions.geojson" and err.value.line == line, str(err.value)


def test_columns_read_back_as_records(tiny_bundle: Path) -> None:
    b = read_bundle(tiny_bundle)
    pois = list(b.pois)
    assert len(pois) == len(b.pois) == 15
    assert [p.region for p in pois] == b.pois.region.tolist()
    assert [p.content_hash for p in pois] == [h.tobytes().hex() for h in b.pois.hashes]
    assert 2 in b.indicators and b.indicators.get(99) is None
    assert set(b.indicators) == {i for i in range(len(b.regions)) if i in b.indicators}
    assert sum(b.mobility.od.values()) == int(b.mobility.od_counts.sum())


def _write_peak(path: Path, tmp_path: Path) -> int:
    """tracemalloc's peak during write_bundle, above what the read bundle holds."""
    from musecl_store.api import Store

    bundle = read_bundle(path, show_progress=False)
    url = f"sqlite:///{tmp_path / (path.name + '.sqlite')}"
    with Store(url) as store, store.session(create=True, write=True) as s:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            write_bundle(s, bundle)
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()


def test_write_memory_does_not_grow_with_the_city(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With small chunks, so that both cities fill many: 4x the regions, about the same
    peak (the write made every row at once before: 2.6x)."""
    from musecl_store.bundle import reader as bundle_mod
    from musecl_store.ingest import hashes
    from musecl_store.store import chunks

    monkeypatch.setattr(bundle_mod, "_CHUNK", 1000)
    monkeypatch.setattr(chunks, "IN_CHUNK", 500)
    monkeypatch.setattr(hashes, "_BLOCK", 500)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from scale import write_bundle as make_bundle
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for n in (1000, 4000):
        make_bundle(tmp_path / str(n), n, pois=3, trips=2, images=20)
    small = _write_peak(tmp_path / "1000", tmp_path)
    big = _write_peak(tmp_path / "4000", tmp_path)
    # what still grows: the change list (the summary's) and ~100 bytes of hashes a region
    assert big < 1.5 * small, (small, big)


@pytest.mark.parametrize("colliding", [False, True])
def test_duplicate_poi_ids_are_found_across_chunks(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, colliding: bool
) -> None:
    """Ids from earlier chunks are kept compactly (a hash, confirmed by the id): the report
    still names every duplicate and its first line, in file order, also when hashes collide
    and when the first one fell in no region."""
    import musecl_store.bundle.reader as bundle

    path = tmp_path / "dupes"
    shutil.copytree(tiny_bundle, path)
    rows = ["poi_id,lon,lat,name,category,text"]
    ids = ["p0", "p1", "p2", "p1", "Zoë", "p3", "p0", "x", "東京", "p10", "p1", "Zoë", "p01"]
    ids += ["p0 ", "x", "东京", "東京", "p10", "out", "out", "bad", "bad"]
    expect: list[str] = []
    first: dict[str, int] = {}
    for line, pid in enumerate(ids, start=2):
        lon = "0.0" if pid == "out" else ("nan" if pid == "bad" else "10.002")
        rows.append(f"{pid},{lon},50.003,n,cafe,")
        key = pid.strip()
        if key in first:
            expect.append(
                f"pois.csv:{line}: poi_id {key!r} is not unique (first on line "
                f"{first[key]}) (skipped)"
            )
        elif pid != "bad":
            first[key] = line
    (path / "pois.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.setattr(bundle, "_CHUNK", 3)
    if colliding:
        monkeypatch.setattr(bundle, "_id_hash", lambda s: len(s) % 2)
    problems = [str(p) for p in read_bundle(path).report.listed if p.file == "pois.csv"]
    assert [p for p in problems if "not unique" in p] == expect
    assert len([p for p in problems if "falls in no region" in p]) == 1
