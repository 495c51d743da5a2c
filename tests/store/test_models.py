"""Model versions: a second training run adds a version; activate; delete refuses the active."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from musecl_store.cli import main
from musecl_store.search.index import RegionIndex
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding
from musecl_store.store.versions import ModelVersionError, activate, delete, list_models
from tests.conftest import FAST_TRAINING

pytestmark = pytest.mark.slow


def test_versions_side_by_side(backend, trained: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.config import TrainConfig
    from training.trainer import train_city

    engine = create_engine(backend.clone(trained))
    train_city(
        engine,
        "demo-3",
        TrainConfig.from_dict({**FAST_TRAINING, "seed": 1, "checkpoint_dir": str(tmp_path / "ck")}),
        log=lambda m: None,
    )
    with transaction(engine) as s:
        rows = list_models(s, "demo-3")
        assert [(r["model_version"], r["active"]) for r in rows] == [(1, False), (2, True)]
        assert rows[0]["embeddings"] == rows[1]["embeddings"] > 0
        RegionIndex.open(s, tmp_path / "idx", 1)
        with pytest.raises(ModelVersionError, match="model version 2 is active; activate another"):
            delete(s, 2)
        with pytest.raises(ModelVersionError, match="model version 9 does not exist"):
            activate(s, 9)
        activate(s, 1)
        out = delete(s, 2, tmp_path / "idx")
        assert out["embeddings_deleted"] == rows[1]["embeddings"]
        assert (
            s.scalar(
                select(func.count()).select_from(Embedding).where(Embedding.model_version_id == 2)
            )
            == 0
        )
        assert [r["model_version"] for r in list_models(s)] == [1]
        assert list_models(s)[0]["active"]
    engine.dispose()


def test_cli_models(backend, trained: str) -> None:  # type: ignore[no-untyped-def]
    url = backend.clone(trained)
    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["--db", url, "models", "list", "--json"]).stdout)
    assert rows[0]["model_version"] == 1 and rows[0]["active"]
    refused = runner.invoke(main, ["--db", url, "models", "delete", "1"])
    assert refused.exit_code == 1 and "is active" in refused.output
    assert runner.invoke(main, ["--db", url, "models", "activate", "1"]).exit_code == 0
