"""Training learns: on a small demo city the trained fused vector predicts the indicators
clearly better than the same network with its initial (untrained) weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from musecl_store.db import open_engine, transaction
from musecl_store.demo import make_demo_city
from musecl_store.embed import embed_regions, load_city_data, region_inputs
from musecl_store.evaluation import ridge_cv
from musecl_store.ingest import ingest_bundle
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder
from musecl_store.regression import kfold_indices, r2_score
from musecl_store.schema import ensure_schema
from musecl_store.tables import Indicator, ModelVersion, Region
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
    r2 = {k: _mean_ridge_r2(v, targets) for k, v in vectors.items()}
    # measured: trained 0.557, untrained 0.518 (ridge, 5 folds, log1p targets). The untrained
    # all-branch fusion is already strong (random projections of standardised counts keep
    # them); the margin training adds here is small and is the next thing to grow.
    assert r2["trained"] > r2["untrained"] + 0.02, r2
