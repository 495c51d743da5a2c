"""Training learns: on a small demo city the trained fused vector beats the same network with
its initial (untrained) weights, both at what similarity search promises (a region's nearest
neighbours share its indicators and its true latent factors) and at linear prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from musecl_store.demo import make_demo_city
from musecl_store.downstream.crossval import ridge_cv
from musecl_store.downstream.ridge import kfold_indices, r2_score
from musecl_store.embedding.inputs import load_city_data, region_inputs
from musecl_store.embedding.run import embed_regions
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder
from musecl_store.store.engine import open_engine, transaction
from musecl_store.store.schema import ensure_schema
from musecl_store.store.tables import Indicator, ModelVersion, Region
from training.config import TrainConfig
from training.trainer import train_city

pytestmark = pytest.mark.slow

CONFIG = {
    "epochs": 2,
    "image_size": 32,
    "batch_size": 32,
    "fusion_epochs": 10,
    "fused_epochs": 30,
    "fused_batch_size": 64,
}


def _mean_ridge_r2(x: np.ndarray, targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    scores = []
    for rows, y in targets.values():
        folds = kfold_indices(len(y), 5, 0)
        pred = ridge_cv(x[rows], y, folds)
        scores.append(np.mean([r2_score(y[t], pred[t]) for t in folds]))
    return float(np.mean(scores))


def _knn_r2(x: np.ndarray, targets: dict[str, tuple[np.ndarray, np.ndarray]], k: int = 5) -> float:
    """Mean R² of predicting each region's indicator by the mean of its k most similar
    regions' values (cosine, leave-one-out): do similar regions share the indicators?"""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = []
    for rows, y in targets.values():
        sim = x[rows] @ x[rows].T
        np.fill_diagonal(sim, -np.inf)
        pred = y[np.argsort(-sim, axis=1)[:, :k]].mean(axis=1)
        scores.append(1 - float(((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()))
    return float(np.mean(scores))


def _neighbour_latent_ratio(x: np.ndarray, latent: np.ndarray, k: int = 5) -> float:
    """Mean latent distance from each region to its k most similar regions, over the mean
    latent distance of all pairs (1 = neighbours no closer than random regions)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    z = (latent - latent.mean(0)) / latent.std(0)
    dist = np.linalg.norm(z[:, None] - z[None], axis=2)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argsort(-sim, axis=1)[:, :k]
    return float(
        dist[np.arange(len(z))[:, None], near].mean() / dist[np.triu_indices(len(z), 1)].mean()
    )


def test_trained_fused_beats_the_untrained_network(tmp_path: Path) -> None:
    make_demo_city(tmp_path / "city", seed=7, regions=160, show_progress=False)
    engine = open_engine(str(tmp_path / "store.sqlite"))
    ensure_schema(engine)
    with transaction(engine) as s:
        ingest_bundle(s, tmp_path / "city", show_progress=False)
    cfg = TrainConfig.from_dict({**CONFIG, "checkpoint_dir": str(tmp_path / "ckpt")})
    result = train_city(engine, "demo-7", cfg, log=lambda m: None)
    with transaction(engine) as s:
        data = load_city_data(s, "demo-7")
        mv = s.get(ModelVersion, result.model_version_id)
        assert mv is not None
        trained, config = MuseclNet.load(mv.checkpoint_path)
        # the trainer's starting point: the same seed, architecture and vocabulary
        torch.manual_seed(cfg.seed)
        untrained = MuseclNet(cfg.dim, trained.text_dim, trained.vocabulary, cfg.stem)
        encoder = TextEncoder(cfg.text_model)
        vectors = {}
        for name, net in (("trained", trained), ("untrained", untrained)):
            inputs = region_inputs(s, data, net, encoder, config)
            if name == "untrained":  # data statistics, not learning: both standardise
                assert net.fusion is not None
                net.fusion.set_normalisation(*inputs.fusion_inputs())
            vectors[name] = embed_regions(inputs, net).vectors["fused"]
        values = s.execute(
            select(Indicator.name, Region.region_id, Indicator.value).join(
                Region, Region.id == Indicator.region_pk
            )
        ).all()
    engine.dispose()
    index = {r: i for i, r in enumerate(data.region_ids)}
    targets = {}
    for name in sorted({n for n, _, _ in values}):
        pairs = [(index[r], v) for n, r, v in values if n == name]
        targets[name] = (np.array([p[0] for p in pairs]), np.log1p([p[1] for p in pairs]))
    with (tmp_path / "city" / "truth" / "latent.csv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    by_id = {r[0]: [float(v) for v in r[1:]] for r in rows}
    latent = np.array([by_id[r] for r in data.region_ids])
    got = {
        name: {
            "knn_r2": _knn_r2(v, targets),
            "neighbour_latent_ratio": _neighbour_latent_ratio(v, latent),
            "ridge_r2": _mean_ridge_r2(v, targets),
        }
        for name, v in vectors.items()
    }
    t, u = got["trained"], got["untrained"]
    # Measured on this city (seed 7; seed 8 in brackets): 5-NN R² trained 0.522 vs untrained
    # 0.426 (0.575 vs 0.461); neighbour latent ratio 0.52 vs 0.61 (0.54 vs 0.61); ridge R²
    # 0.563 vs 0.518 (0.618 vs 0.526). The ridge margin is the smallest: a linear head on
    # an untrained projection of the standardised counts already recovers much of them,
    # while which regions are each other's nearest neighbours is what training changes.
    assert t["knn_r2"] > u["knn_r2"] + 0.06, got
    assert t["neighbour_latent_ratio"] < u["neighbour_latent_ratio"] - 0.05, got
    assert t["ridge_r2"] > u["ridge_r2"] + 0.02, got
