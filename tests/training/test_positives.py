"""The contrastive positives really are similar places: measured against the demo city's
true latent factors (``truth/latent.csv``), which the trainer never reads."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import sparse

from musecl_store.demo import make_demo_city
from musecl_store.embedding.inputs import CityData, load_city_data
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import open_engine, transaction
from musecl_store.store.schema import ensure_schema
from training import similarity
from training.config import TrainConfig
from training.data import positives


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[CityData, np.ndarray]:
    """A 300-region demo city read back from a SpatiaLite store, and its latent factors."""
    tmp = tmp_path_factory.mktemp("positives")
    make_demo_city(tmp / "city", seed=5, regions=300, show_progress=False)
    engine = open_engine(str(tmp / "store.sqlite"))
    ensure_schema(engine)
    with transaction(engine) as s:
        ingest_bundle(s, tmp / "city", show_progress=False)
    with transaction(engine) as s:
        data = load_city_data(s, "demo-5")
    engine.dispose()
    with (tmp / "city" / "truth" / "latent.csv").open(encoding="utf-8") as fh:
        rows = {r[0]: [float(x) for x in r[1:]] for r in list(csv.reader(fh))[1:]}
    return data, np.array([rows[r] for r in data.region_ids])


def _ratio(idx: np.ndarray, latent: np.ndarray) -> float:
    """Mean latent distance of (region, positive) pairs over that of random pairs."""
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(latent), (2, 20000))
    keep = i != j
    random = np.linalg.norm(latent[i[keep]] - latent[j[keep]], axis=1).mean()
    a, b = np.nonzero(idx >= 0)
    return float(np.linalg.norm(latent[a] - latent[idx[a, b]], axis=1).mean() / random)


@pytest.mark.parametrize("which", ["poi", "mobility", "profile", "spatial"])
def test_positives_are_much_closer_in_latent_factors_than_random_pairs(
    city: tuple[CityData, np.ndarray], which: str
) -> None:
    data, latent = city
    idx = positives(which, data, TrainConfig())
    assert (idx >= 0).any(axis=1).mean() > 0.95  # nearly every region has positives
    # measured on seed 0: poi 0.43, mobility 0.56, spatial 0.26 (random pairs: 1)
    assert _ratio(idx, latent) < 0.7


def test_smoothed_positives_beat_the_papers_raw_profiles(city: tuple[CityData, np.ndarray]) -> None:
    """POI-share cosine with ~9 POIs per region picks barely-similar pairs; the smoothed
    count profile does much better (the reason it is the default)."""
    data, latent = city
    cats = sorted(set(data.poi_category))
    code = [cats.index(c) for c in data.poi_category]
    shares = similarity.poi_profiles(data.n, data.poi_region, code, len(cats))
    paper, _ = similarity.cosine_topk(shares, 10)
    ours = positives("poi", data, TrainConfig())
    assert _ratio(ours, latent) < 0.75 * _ratio(paper, latent)


def test_smoothing_by_hand() -> None:
    # a path 0 - 1 - 2: each region's neighbours are the ones beside it
    knn = np.array([[1, -1], [0, 2], [1, -1]])
    x = np.array([[0.0], [3.0], [6.0]])
    once = similarity.smooth(x, knn, 1, self_weight=0.5).toarray()
    np.testing.assert_allclose(once, [[1.5], [3.0], [4.5]])
    assert isinstance(similarity.smooth(sparse.csr_matrix(x), knn, 0), sparse.csr_matrix)


def test_spatial_knn_finds_the_nearest_centroids() -> None:
    lonlat = np.array([[8.0, 47.0], [8.001, 47.0], [8.01, 47.0], [8.1, 47.0]])
    knn = similarity.spatial_knn(lonlat, 2)
    assert knn[0].tolist() == [1, 2]
    assert knn[3].tolist() == [2, 1]


def test_the_ratio_is_about_one_for_unrelated_pairs() -> None:
    """Guard for the measure above: pairs chosen without regard to the factors score ~1."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 6))
    idx = np.tile(np.arange(1, 11), (500, 1)) % 500
    assert 0.8 < _ratio(idx, z) < 1.2
