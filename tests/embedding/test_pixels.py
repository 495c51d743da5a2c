"""Images for training and embedding (``musecl_store.embedding.run.Pixels``): held in memory
when they fit in the image cache, else decoded batch by batch from their files, with the same pixels
and the same embeddings either way, and every image checked against its sha256 as read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import musecl_store
from musecl_store.embedding.images import ImageChangedError
from musecl_store.embedding.inputs import CityData, load_city_data, visual_means
from musecl_store.errors import InputError
from musecl_store.nn.model import MuseclNet

CITY = "demo-3"


@pytest.fixture(scope="module")
def city(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> CityData:
    root = tmp_path_factory.mktemp("pixels")
    bundle = root / "city"
    shutil.copytree(demo_bundle, bundle)
    with musecl_store.open(root / "store.sqlite", create=True) as store:
        store.ingest(bundle)
        with store.session() as s:
            data = load_city_data(s, CITY)
            s.expunge_all()
    return data


def fresh(data: CityData) -> CityData:
    return data.only_regions(np.ones(data.n, bool))  # the same city, no pixels read yet


def test_decoded_per_batch_when_the_cache_is_too_small(
    city: CityData, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = fresh(city).pixels("remote", 32)
    assert held.cached and len(held) > 50
    monkeypatch.setenv("MUSECL_IMAGE_CACHE_MB", "0.01")  # less than the city's tiles
    lazy = fresh(city).pixels("remote", 32)
    assert not lazy.cached and lazy._all is None  # nothing held
    assert len(lazy) == len(held)
    rows = np.random.default_rng(0).choice(len(held), 40)
    for index in (rows, torch.from_numpy(rows), slice(3, 17), slice(None, None, 5)):
        got = lazy[index]
        assert got.dtype == torch.uint8 and got.shape[1:] == (3, 32, 32)
        assert torch.equal(got, held[index])


def test_the_same_embeddings_either_way(city: CityData, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = MuseclNet(16, 384, ["a"])
    held = visual_means(fresh(city), net, 32, show_progress=False)
    monkeypatch.setenv("MUSECL_IMAGE_CACHE_MB", "0")
    lazy = visual_means(fresh(city), net, 32, show_progress=False)
    for kind in held:
        assert np.array_equal(held[kind][1], lazy[kind][1])
        assert np.allclose(held[kind][0], lazy[kind][0], atol=1e-6)
    assert held["remote"][1].any()  # a check that can fail: there were images to encode


def test_a_changed_image_is_caught_when_its_batch_is_read(
    city: CityData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MUSECL_IMAGE_CACHE_MB", "0")
    data = fresh(city)
    source = Path(data.city.source_path)
    copy = tmp_path / "city"
    shutil.copytree(source, copy)
    data.city.source_path = str(copy)
    pix = data.pixels("street", 32)
    first = data.images["street"].paths[0]
    (copy / first).write_bytes((copy / data.images["street"].paths[1]).read_bytes())
    pix[[1, 2]]  # other images read fine
    with pytest.raises(ImageChangedError, match="changed since it was ingested"):
        pix[[0]]


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_cache_size_is_named(
    city: CityData, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MUSECL_IMAGE_CACHE_MB", value)
    with pytest.raises(InputError, match="MUSECL_IMAGE_CACHE_MB"):
        fresh(city).pixels("remote", 32)
