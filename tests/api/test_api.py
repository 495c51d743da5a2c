"""The public Python API (``musecl_store.open`` and ``Store``) on both backends: the README's
notebook example runs as it is, frames agree with the library underneath, a missing store is
not created by a read, and the CLI (a thin layer over it) takes ``--db`` on either side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import musecl_store
from musecl_store.api import InputError, StoreNotFoundError
from musecl_store.cli import main
from musecl_store.cli.csvfiles import read_points_csv
from musecl_store.nn.fusion import BRANCHES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Using it from Python' section has no python block"
    return match.group(1)


@pytest.fixture
def store_url(backend, trained: str):  # type: ignore[no-untyped-def]
    return backend.clone(trained)


def test_readme_notebook_example_runs_as_it_is(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MUSECL_DATABASE_URL", store_url)
    monkeypatch.setenv("MUSECL_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "demo-3" in out and "5-fold R²" in out
    hits = namespace["hits"]
    assert len(hits) == 5 and list(hits["rank"]) == [1, 2, 3, 4, 5]  # type: ignore[call-overload]
    table = namespace["table"]
    assert len(table) == len(namespace["regions"]) and "e0" in table  # type: ignore[arg-type, operator]


def test_frames_agree_with_the_library(store_url: str, tmp_path: Path) -> None:
    with musecl_store.open(store_url, index_dir=tmp_path / "index") as store:
        regions = store.regions("demo-3", indicators=True)
        info = store.info("demo-3")
        assert len(regions) == info["regions"] and regions.crs.to_epsg() == 4326
        assert set(regions.geom_type) <= {"Polygon", "MultiPolygon"}
        assert regions.region_id.is_monotonic_increasing
        for name, n in info["indicators"].items():
            assert regions[name].notna().sum() == n
        ids = list(regions.region_id[:7])
        by_id = store.features("demo-3", ids)
        pts = list(zip(regions.lon[:7], regions.lat[:7], strict=True))
        by_point = store.features("demo-3", points=pts)
        assert list(by_point.region_id) == ids
        np.testing.assert_array_equal(
            by_id.drop(columns="region_id").to_numpy(),
            by_point.drop(columns=["lon", "lat", "region_id"]).to_numpy(),
        )
        hits = store.similar("demo-3", ids[0], k=8, attention=True)
        records = store.search("demo-3", ids[0], k=8, attention=True)
        assert list(hits.region_id) == [h.region_id for h in records]
        assert {c.split(":", 1)[1] for c in hits.columns if c.startswith("attention:")} == set(
            BRANCHES
        )
        # the vector of a region finds the region itself first, with score 1
        vec = by_id.drop(columns="region_id").to_numpy()[0]
        self_hit = store.similar("demo-3", vector=vec, k=1)
        assert self_hit.region_id[0] == ids[0] and self_hit.score[0] == pytest.approx(1, abs=1e-5)
        geo = store.similar("demo-3", ids[0], k=3, geometry=True)
        assert geo.crs.to_epsg() == 4326 and len(geo) == 3


def test_percentile_is_the_share_of_less_similar_regions(store_url: str, tmp_path: Path) -> None:
    with musecl_store.open(store_url, index_dir=tmp_path / "index") as store:
        feats = store.features("demo-3")
        mat = feats.drop(columns="region_id").to_numpy()
        normed = mat / np.linalg.norm(mat, axis=1, keepdims=True)
        q = 4
        others = np.delete(normed @ normed[q], q)
        hits = store.similar("demo-3", feats.region_id[q], k=len(others))
        assert len(hits) == len(others)
        expected = [100 * np.sum(others < s - 1e-6) / (len(others) - 1) for s in hits.score]
        np.testing.assert_allclose(hits.percentile, np.round(expected, 1), atol=0.051)
        assert hits.percentile.is_monotonic_decreasing
        assert hits.percentile.iloc[0] == 100.0 and hits.percentile.iloc[-1] == 0.0


def test_percentiles_under_filters_and_from_a_sample(store_url: str, tmp_path: Path) -> None:
    from musecl_store.search.filters import Filters
    from musecl_store.search.index import RegionIndex
    from musecl_store.search.query import Query, similar
    from musecl_store.store.engine import create_engine, transaction

    with musecl_store.open(store_url, index_dir=tmp_path / "index") as store:
        regions = store.regions("demo-3")
        q = regions.region_id[0]
        lon, lat = float(regions.lon[0]), float(regions.lat[0])
        near = store.similar("demo-3", q, k=5, near=(lon, lat, 2.5))
        feats = store.features("demo-3").set_index("region_id")
    # exact under the filter: the share of the other regions within 2.5 km less similar
    mat = feats.to_numpy()
    normed = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    sims = dict(zip(feats.index, normed @ normed[list(feats.index).index(q)], strict=True))
    from pyproj import Geod

    _, _, dist = Geod(ellps="WGS84").inv(
        np.full(len(regions), lon), np.full(len(regions), lat), regions.lon, regions.lat
    )
    pool = [sims[r] for r, d in zip(regions.region_id, dist, strict=True) if d <= 2500 and r != q]
    assert len(pool) >= 11
    for score, pct in zip(near.score, near.percentile, strict=True):
        want = 100 * sum(p < score - 1e-6 for p in pool) / (len(pool) - 1)
        assert pct == pytest.approx(want, abs=0.051)
    # from a sample of 20 regions (as above 10,000): percentiles stay within 0..100 and fall
    # with the rank; with fewer than 10 reference regions there is none
    engine = create_engine(store_url)
    with transaction(engine) as s:
        idx = RegionIndex.open(s, tmp_path / "index2", 1)
        idx.sample_size = 20
        hits = similar(s, idx, Query(city="demo-3", region_id=q), k=30)
        pcts = [h.percentile for h in hits]
        assert all(p is not None and 0 <= p <= 100 for p in pcts)
        assert pcts == sorted(pcts, reverse=True) and pcts[0] == 100.0
        idx.sample_size = 5
        assert all(h.percentile is None for h in similar(s, idx, Query("demo-3", q), k=3))
        filtered = similar(s, idx, Query("demo-3", q), k=3, filters=Filters(near=(lon, lat, 0.01)))
        assert all(h.percentile is None for h in filtered)  # too few regions pass to rank
    engine.dispose()


def test_searches_stay_right_while_the_index_is_rebuilt(store_url: str, tmp_path: Path) -> None:
    import threading

    with musecl_store.open(store_url, index_dir=tmp_path / "index") as store:
        ids = list(store.regions("demo-3").region_id)
        want = {r: list(store.similar("demo-3", r, k=5).region_id) for r in ids[:6]}
        errors: list[BaseException] = []

        def reader(i: int) -> None:
            try:
                for n in range(15):
                    r = ids[(i + n) % 6]
                    assert list(store.similar("demo-3", r, k=5).region_id) == want[r]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for _ in range(3):
            store.build_index("demo-3")
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["mv1-fused"]


def test_a_read_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.sqlite"
    store = musecl_store.open(missing)
    with pytest.raises(StoreNotFoundError, match="no store at"):
        store.cities()
    with pytest.raises(StoreNotFoundError):
        store.status()
    assert not (tmp_path / "no").exists()
    result = CliRunner().invoke(main, ["--db", str(missing), "cities"])
    assert result.exit_code == 1 and "no store at" in result.output
    assert not (tmp_path / "no").exists()


def test_db_option_on_either_side_of_the_command(db_url: str, tiny_bundle: Path) -> None:
    runner = CliRunner()
    ingest = runner.invoke(main, ["ingest", str(tiny_bundle), "--db", db_url, "--json"])
    assert ingest.exit_code == 0, ingest.output
    before = runner.invoke(main, ["--db", db_url, "cities", "--json"])
    after = runner.invoke(main, ["cities", "--json", "--db", db_url])
    assert before.exit_code == after.exit_code == 0
    assert json.loads(before.output) == json.loads(after.output)
    assert [c["city"] for c in json.loads(after.output)] == ["tiny"]
    # the command's own --db wins over the group's
    text = runner.invoke(main, ["--db", "/no/such/store.sqlite", "cities", "--db", db_url])
    assert text.exit_code == 0, text.output
    header = text.output.splitlines()[0].split()
    assert header == ["city", "regions", "revision", "crs", "source"]


def test_cli_text_tables_have_headers(store_url: str, tmp_path: Path) -> None:
    runner = CliRunner(env={"MUSECL_INDEX_DIR": str(tmp_path / "index")})
    feats = musecl_store.open(store_url).features("demo-3")
    out = runner.invoke(
        main,
        [
            "--db",
            store_url,
            "similar",
            "--city",
            "demo-3",
            str(feats.region_id[0]),
            "-k",
            "3",
            "--attention",
        ],
    )
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:5] == ["rank", "region_id", "city", "score", "percentile"]
    assert len(lines) == 4 and lines[1].split()[0] == "1"
    models = runner.invoke(main, ["--db", store_url, "models", "list"])
    assert models.output.splitlines()[0].split()[:3] == ["active", "version", "city"]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["r", "--bbox", "200,0,201,1"], "longitude 200.0 is outside"),
        (["--point", "8.5,100"], "latitude 100.0 is outside"),
        (["r", "--near", "8.5,47,x"], "expected LON,LAT,KM"),
    ],
)
def test_out_of_range_coordinates_are_usage_errors(args: list[str], hint: str) -> None:
    result = CliRunner().invoke(main, ["similar", "--city", "x", *args])
    assert result.exit_code == 2 and hint in result.output


def test_points_csv_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("name,lon,lat\na,8.5,47.3\nb,8.6,47.4\n")
    assert read_points_csv(good) == [(8.5, 47.3), (8.6, 47.4)]
    for body, what in [
        ("lon,lat\n8.5,47.3\n8.6\n", ":3: the row has no lon or lat"),
        ("lon,lat\n8.5,47.3\n8.6,abc\n", ":3: lon/lat must be numbers"),
        ("lon,lat\n8.5,147.3\n", ":2: (8.5, 147.3) is not a lon/lat point"),
        ("x,y\n1,2\n", "needs lon and lat columns"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(InputError, match=re.escape(what)):
            read_points_csv(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_points_csv(tmp_path / "missing.csv")


def test_the_bundle_contract_ships_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\(([^)#:]+)\)", readme):  # every relative link resolves
        assert (ROOT / link).exists(), f"README links {link}, which the repository lacks"
    assert "docs/city-bundle.md" in readme and "../shared" not in readme
