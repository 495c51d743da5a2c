"""Training end to end on a tiny generated city, on both backends: every region gets every
kind of embedding; runs are deterministic and resume from their checkpoint; bad input is
refused with a clear message; evaluate prints the paper's table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from musecl_store.cli import main
from musecl_store.downstream.evaluation import EMBEDDINGS, EvaluationError, evaluate_city
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import transaction
from musecl_store.store.tables import Embedding, ModelVersion, Region
from musecl_store.store.vectors import load_embeddings
from training.config import TrainConfig
from training.data import TrainingError
from training.trainer import Trainer, train_city

pytestmark = pytest.mark.slow

FAST = {
    "epochs": 1,
    "fusion_epochs": 4,
    "image_size": 32,
    "batch_size": 16,
    "top_k": 3,
    "val_fraction": 0.2,
    "fusion_batch_size": 16,
}


@pytest.fixture(scope="module")
def small_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from musecl_store.demo import make_demo_city

    out = tmp_path_factory.mktemp("small") / "city"
    make_demo_city(out, seed=5, regions=20)
    return out


def config(tmp_path: Path, **extra: object) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, "checkpoint_dir": str(tmp_path / "ckpt"), **extra})


def test_every_region_gets_every_kind(engine, small_city: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, small_city)
    result = train_city(engine, "demo-5", config(tmp_path), log=lambda m: None)
    with transaction(engine) as s:
        n_regions = s.scalar(select(func.count()).select_from(Region))
        mv = s.get(ModelVersion, result.model_version_id)
        assert mv is not None and mv.active and mv.seed == 0
        assert mv.config["epochs"] == 1 and mv.library_versions["torch"]
        assert Path(mv.checkpoint_path).is_file() and mv.metrics["history"]["remote"]
        for kind in ("remote", "street", "poi", "fused"):
            ids, mat = load_embeddings(s, mv.id, kind)
            assert len(ids) == n_regions and mat.shape == (n_regions, 128)
            assert np.isfinite(mat).all()
        fused = s.scalars(select(Embedding).where(Embedding.kind == "fused")).all()
        imputed_street = {
            e.region_pk
            for e in s.scalars(
                select(Embedding).where(Embedding.kind == "street", Embedding.imputed.is_(True))
            )
        }
    assert imputed_street  # this city has regions without street views ...
    for e in fused:  # ... whose attention on street is exactly 0
        assert e.attention is not None and sum(e.attention.values()) == pytest.approx(1.0)
        if e.region_pk in imputed_street:
            assert e.attention["street"] == 0.0

    with transaction(engine) as s:
        records = evaluate_city(s, "demo-5", indicators=["crime"])
    assert [r["embedding"] for r in records if r["head"] == "mlp"] == list(EMBEDDINGS)
    assert {r["head"] for r in records} == {"mlp", "ridge"}
    assert all(
        set(r) == {"indicator", "embedding", "head", "r2", "r2_std", "rmse", "mape", "n"}
        for r in records
    )
    with transaction(engine) as s:
        saved = s.get(ModelVersion, result.model_version_id)
        assert saved is not None and saved.metrics["evaluation"]["records"] == records
        with pytest.raises(EvaluationError, match="indicator\\(s\\) income do not exist"):
            evaluate_city(s, "demo-5", indicators=["income"])


def test_same_seed_same_embeddings_and_resume_finishes_the_job(
    backend, small_city: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from musecl_store.store.engine import create_engine

    def fresh() -> object:
        e = create_engine(backend.new_url())
        with transaction(e) as s:
            ingest_bundle(s, small_city)
        return e

    cfg = config(tmp_path, epochs=2)
    e1 = fresh()
    train_city(e1, "demo-5", cfg, resume=False, log=lambda m: None)  # type: ignore[arg-type]
    with transaction(e1) as s:  # type: ignore[arg-type]
        _, first = load_embeddings(s, 1, "fused")
    shutil.rmtree(tmp_path / "ckpt")

    class Crash(Exception):
        pass

    e2 = fresh()
    trainer_cls = Trainer
    original = trainer_cls.train_fusion

    def crash(self, *a, **k):  # type: ignore[no-untyped-def]
        raise Crash("killed during the fusion stage")

    trainer_cls.train_fusion = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            train_city(e2, "demo-5", cfg, log=lambda m: None)  # type: ignore[arg-type]
    finally:
        trainer_cls.train_fusion = original  # type: ignore[method-assign]
    assert any((tmp_path / "ckpt").rglob("state.pt"))
    logs: list[str] = []
    train_city(e2, "demo-5", cfg, log=logs.append)  # type: ignore[arg-type]
    with transaction(e2) as s:  # type: ignore[arg-type]
        _, resumed = load_embeddings(s, 1, "fused")
    assert any("resuming" in m and "stage fusion" in m for m in logs)
    assert not any(m.startswith("remote epoch") for m in logs)  # finished stages are not redone
    np.testing.assert_allclose(resumed, first, atol=1e-5)


def test_bad_input_is_refused_clearly(engine, small_city: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    no_pois = tmp_path / "no_pois"
    shutil.copytree(small_city, no_pois)
    (no_pois / "pois.csv").write_text("poi_id,lon,lat,name,category,text\n")
    (no_pois / "city.json").write_text(json.dumps({"name": "empty", "h3_resolution": 8}))
    with transaction(engine) as s:
        ingest_bundle(s, no_pois)
    with pytest.raises(TrainingError, match="city 'empty' has no POIs"):
        train_city(engine, "empty", config(tmp_path), log=lambda m: None)

    no_images = tmp_path / "no_images"
    shutil.copytree(small_city, no_images)
    lines = (no_images / "images.csv").read_text().splitlines()
    first_cell = lines[1].split("/")[2].split("_")[0]
    kept = [ln for ln in lines if first_cell not in ln]
    (no_images / "images.csv").write_text("\n".join(kept) + "\n")
    (no_images / "city.json").write_text(json.dumps({"name": "gappy", "h3_resolution": 8}))
    with transaction(engine) as s:
        ingest_bundle(s, no_images)
    with pytest.raises(
        TrainingError, match=f"1 region\\(s\\) have no images at all \\(e.g. {first_cell}\\)"
    ):
        train_city(engine, "gappy", config(tmp_path), log=lambda m: None)
    result = train_city(
        engine, "gappy", config(tmp_path, skip_regions_without_images=True), log=lambda m: None
    )
    with transaction(engine) as s:
        ids, _ = load_embeddings(s, result.model_version_id, "fused")
    assert first_cell not in ids and ids


def test_cli_train_and_evaluate_json(db_url: str, small_city: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**FAST, "checkpoint_dir": str(tmp_path / "ck")}))
    assert runner.invoke(main, ["--db", db_url, "ingest", str(small_city)]).exit_code == 0
    out = runner.invoke(
        main, ["--db", db_url, "train", "--city", "demo-5", "--config", str(cfg), "--json"]
    )
    assert out.exit_code == 0, out.output
    trained = json.loads(out.stdout)
    assert trained["embeddings"]["fused"] > 0
    ev = runner.invoke(
        main,
        [
            "--db",
            db_url,
            "evaluate",
            "--city",
            "demo-5",
            "--indicator",
            "poi_count",
            "--log-target",
            "--json",
        ],
    )
    assert ev.exit_code == 0, ev.output
    assert len(json.loads(ev.stdout)) == 2 * len(EMBEDDINGS)  # one indicator, two heads
    bad = runner.invoke(
        main,
        ["--db", db_url, "train", "--city", "demo-5", "--config", str(tmp_path / "missing.json")],
    )
    assert bad.exit_code == 1 and "does not exist" in bad.output
    (tmp_path / "typo.json").write_text('{"epoch": 1}')
    typo = runner.invoke(
        main, ["--db", db_url, "train", "--city", "demo-5", "--config", str(tmp_path / "typo.json")]
    )
    assert typo.exit_code == 1 and "unknown key(s) epoch" in typo.output
