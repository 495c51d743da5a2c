"""The evaluation heads: closed-form ridge equals brute-force leave-one-out, the mini-batch
MLP head really fits and repeats for a seed, and the table's rows come from the store."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.cli import main
from musecl_store.downstream import evaluation
from musecl_store.downstream.crossval import holdout_masks, mlp_cv, mlp_cv_many, ridge_cv, score
from musecl_store.downstream.evaluation import EMBEDDINGS, evaluate_city, markdown_table
from musecl_store.downstream.mlp import EvalConfig, train_mlps
from musecl_store.downstream.ridge import (
    RIDGE_ALPHAS,
    RidgePath,
    kfold_indices,
    r2_score,
    ridge_fit,
    ridge_fit_auto,
)
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import transaction
from musecl_store.store.tables import City, ModelVersion, Region
from musecl_store.store.vectors import load_embeddings, put_embeddings


def _problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + rng.normal(size=d)
    y = x[:, : min(d, 3)] @ np.array([1.0, -2.0, 0.5])[: min(d, 3)] + rng.normal(size=n)
    return x, y


def _brute_loo_mse(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Refit n times, each without one row (features scaled with all rows' std, as the
    closed form does; the intercept is refitted)."""
    sd = x.std(0)
    z = x / np.where(sd == 0, 1.0, sd)
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        zk, yk = z[keep], y[keep]
        zm, ym = zk.mean(0), yk.mean()
        zc = zk - zm
        w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (yk - ym))
        errs.append(y[i] - (ym + (z[i] - zm) @ w))
    return float(np.mean(np.square(errs)))


@pytest.mark.parametrize(("n", "d"), [(40, 6), (24, 30)])  # more rows than features, and fewer
def test_closed_form_ridge_equals_brute_force_leave_one_out(n: int, d: int) -> None:
    x, y = _problem(n, d, seed=n)
    path = RidgePath.of(x, y)
    fast = np.array([path.loo_mse(a) for a in RIDGE_ALPHAS])
    slow = np.array([_brute_loo_mse(x, y, a) for a in RIDGE_ALPHAS])
    np.testing.assert_allclose(fast, slow, rtol=1e-7)
    w, b, alpha = ridge_fit_auto(x, y)
    assert alpha == RIDGE_ALPHAS[int(np.argmin(slow))]
    w_slow, b_slow = ridge_fit(x, y, alpha)  # the solve, not the SVD
    np.testing.assert_allclose(w, w_slow, rtol=1e-8, atol=1e-10)
    assert b == pytest.approx(b_slow, rel=1e-8, abs=1e-10)


def test_ridge_picks_a_sensible_penalty() -> None:
    x, y = _problem(610, 128, seed=0)
    _, _, alpha = ridge_fit_auto(x, y)
    assert alpha < 100  # a strong signal in 3 of 128 columns wants little shrinkage
    noise = np.random.default_rng(1).normal(size=610)
    _, _, alpha_noise = ridge_fit_auto(x, noise)
    assert alpha_noise >= 1000  # pure noise: shrink towards the mean


def _nonlinear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 4))
    y = np.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.1 * rng.normal(size=n)
    return x, y


def test_mlp_head_fits_a_nonlinear_function_out_of_fold() -> None:
    x, y = _nonlinear(300, seed=0)  # the default head, as `musecl evaluate` runs it
    folds = kfold_indices(len(y), 5, 0)
    mlp = mlp_cv(x, y, folds, EvalConfig())
    r2_mlp = np.mean([r2_score(y[t], mlp[t]) for t in folds])
    ridge = ridge_cv(x, y, folds)
    r2_ridge = np.mean([r2_score(y[t], ridge[t]) for t in folds])
    # a constant predictor scores <= 0; a linear model cannot see sin or the square
    assert r2_mlp > 0.85, r2_mlp
    assert r2_ridge < 0.1 and r2_mlp > r2_ridge + 0.7


def test_mlp_head_is_deterministic_for_a_seed() -> None:
    x, y = _nonlinear(120, seed=1)
    cfg = EvalConfig(mlp_max_epochs=8, mlp_patience=3, mlp_dropout=0.1)
    a = score(x, y, cfg, heads=("mlp",))
    b = score(x, y, cfg, heads=("mlp",))
    c = score(x, y, EvalConfig(seed=1, mlp_max_epochs=8, mlp_patience=3, mlp_dropout=0.1))
    assert a == b
    assert a["mlp"] != c["mlp"]
    assert set(a) == {"mlp"} and set(c) == {"mlp", "ridge"}


def test_each_network_trains_as_if_alone() -> None:
    """Networks that stop early leave the batch; the others go on exactly as they would
    alone (each has its own random generator)."""
    x, y = _nonlinear(120, seed=0)
    train, stop = holdout_masks(120, kfold_indices(120, 5, 0), seed=0)
    cfg = EvalConfig(mlp_max_epochs=40, mlp_patience=4, mlp_dropout=0.1)
    together = train_mlps(x, y, train, stop, cfg)
    alone = train_mlps(x, y, train[:1], stop[:1], cfg)
    assert together.epochs is not None and alone.epochs is not None
    assert together.epochs.min() < together.epochs[0] == alone.epochs[0]  # others left first
    np.testing.assert_allclose(together.predict(x)[0], alone.predict(x)[0], atol=1e-5)


def test_targets_batched_together_match_one_by_one() -> None:
    """evaluate trains every indicator's folds in one batch: the same as one at a time."""
    x, y = _nonlinear(150, seed=0)
    y2 = 3 * np.cos(x[:, 2]) + x[:, 3]
    some = np.flatnonzero(np.arange(150) % 3 != 0)  # an indicator only some regions have
    cfg = EvalConfig(mlp_max_epochs=30, mlp_patience=5)
    jobs = [
        (np.arange(150), y, kfold_indices(150, 5, 0)),
        (np.arange(150), y2, kfold_indices(150, 5, 1)),  # batched with the first
        (some, y2[some], kfold_indices(len(some), 5, 0)),  # far fewer rows: its own batch
    ]
    together = mlp_cv_many(x, jobs, cfg)
    for (rows, target, folds), pred in zip(jobs, together, strict=True):
        alone = mlp_cv(x[rows], target, folds, cfg)
        np.testing.assert_allclose(pred, alone, atol=1e-5)


def _fake_model(engine, bundle: Path, kinds: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """A stored city with an active model version of random embeddings (no training)."""
    rng = np.random.default_rng(0)
    with transaction(engine) as s:
        ingest_bundle(s, bundle, show_progress=False)
        city_id = s.scalar(select(City.id).where(City.name == "demo-3"))
        mv = ModelVersion(
            city_id=city_id, config={}, seed=0, data_revision=1, checkpoint_path="-", active=True
        )
        s.add(mv)
        s.flush()
        pks = list(s.scalars(select(Region.id).order_by(Region.region_id)))
        for kind in kinds:
            vecs = rng.normal(size=(len(pks), 8)).astype(np.float32)
            put_embeddings(s, mv.id, kind, pks, vecs, revision=1)


def test_table_rows_without_fused_visual(engine, demo_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    # the fake model has no model file to compute fused_visual with: that row is left out
    _fake_model(engine, demo_bundle, ("remote", "street", "poi", "fused"))
    cfg = EvalConfig(mlp_max_epochs=4, mlp_patience=2)
    with transaction(engine) as s:
        records = evaluate_city(s, "demo-3", indicators=["crime", "poi_count"], cfg=cfg)
        one_by_one = evaluate_city(
            s, "demo-3", indicators=["crime", "poi_count"], cfg=replace(cfg, workers=1)
        )
    assert records == one_by_one  # rows scored in parallel threads: the same numbers
    embs = [e for e in EMBEDDINGS if e != "fused_visual"]  # a model from before: no such row
    assert list(dict.fromkeys(r["embedding"] for r in records)) == embs
    assert len(records) == 2 * len(embs) * 2
    assert all(
        set(r) == {"indicator", "embedding", "head", "r2", "r2_std", "rmse", "mape", "n"}
        for r in records
    )
    table = markdown_table(records)
    assert "| counts+fused |" in table and "fused_visual" not in table
    assert "mean R² (mlp) | mean R² (ridge) |" in table


@pytest.mark.parametrize("visual", [False, True])
def test_cli_evaluate_json_is_clean(  # type: ignore[no-untyped-def]
    engine, demo_bundle: Path, visual: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(engine, demo_bundle, ("remote", "street", "poi", "fused"))
    if visual:  # stands in for the model's visual fusion (the fake model has no model file)

        def fusion(session: Session, mv: int, city_id: int) -> tuple[list[str], np.ndarray]:
            ids, remote = load_embeddings(session, mv, "remote", city_id)
            return ids, remote[:, ::-1].copy()

        monkeypatch.setattr(evaluation, "visual_fusion_vectors", fusion)
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    args = ["evaluate", "--city", "demo-3", "--indicator", "crime", "--folds", "2", "--json"]
    res = CliRunner().invoke(main, ["--db", url, *args])
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)  # stdout holds the JSON and nothing else
    want = [e for e in EMBEDDINGS if visual or e != "fused_visual"]
    assert [r["embedding"] for r in records if r["head"] == "mlp"] == want
