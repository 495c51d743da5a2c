"""The synthetic city: valid, deterministic, calibrated, with missing modalities."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from musecl_store.bundle.reader import read_bundle
from musecl_store.demo import make_demo_city


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_city(tmp_path: Path) -> None:
    a = make_demo_city(tmp_path / "a", seed=7, regions=40)
    b = make_demo_city(tmp_path / "b", seed=7, regions=40)
    make_demo_city(tmp_path / "c", seed=8, regions=40)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    assert a.counts == b.counts


def test_demo_bundle_is_valid_and_has_gaps(demo_bundle: Path) -> None:
    b = read_bundle(demo_bundle)
    assert b.report.total() == 0
    n = len(b.regions)
    assert 45 <= n <= 80  # "about 60"
    with_street = {im.region for im in b.images if im.kind == "street"}
    with_remote = {im.region for im in b.images if im.kind == "remote"}
    with_trips = {i for i in range(n) if b.mobility.inflow[i] or b.mobility.outflow[i]}
    assert len(with_remote) == n
    assert 0 < len(with_street) < n
    assert 0 < len(with_trips) < n
    assert any(p.name == "" for p in b.pois) and any(p.text for p in b.pois)
    with (demo_bundle / "indicators.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["region_id", "population_density", "housing_density", "crime", "poi_count"]


@pytest.mark.slow
def test_full_size_city_is_calibrated(tmp_path: Path) -> None:
    """At ~600 regions the true factors explain a lot, but not everything, of each indicator."""
    city = make_demo_city(tmp_path / "city", seed=0, regions=600)
    assert 550 <= city.counts["regions"] <= 700
    for name, r2 in city.latent_r2.items():
        assert 0.4 < r2["raw"] < 0.9, name
        assert 0.6 < r2["log1p"] < 0.9, name


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    make_demo_city(tmp_path / "x", seed=0, regions=10)
    with pytest.raises(ValueError, match="not empty; pick another folder or pass --force"):
        make_demo_city(tmp_path / "x", seed=0, regions=10)
    make_demo_city(tmp_path / "x", seed=1, regions=10, overwrite=True)
    with pytest.raises(ValueError, match="at least 7"):
        make_demo_city(tmp_path / "y", regions=3)
