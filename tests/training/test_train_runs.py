"""Training runs and the store: a run is keyed on the city's content (not its name or
revision number) and a finished one is reused, in another store or after its model version
was deleted; training holds no transaction, so the store stays writable meanwhile, and data
that changed under a run are not written over; ``--device`` picks cpu or cuda."""

from __future__ import annotations

import csv
import json
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from musecl_store.cli import main
from musecl_store.embedding.inputs import load_city_data, text_embeddings
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.nn.text import TextEncoder
from musecl_store.store.cities import get_city
from musecl_store.store.engine import create_engine, session_factory, transaction
from musecl_store.store.tables import ModelVersion, Region, TextEmbedding
from musecl_store.store.vectors import load_embeddings
from tests.conftest import Backend
from tests.training.test_train_end_to_end import FAST
from training.checkpoint import _on_cpu, run_id
from training.config import TrainConfig
from training.data import TrainingError, city_content
from training.device import DeviceError, resolve_device
from training.trainer import Trainer, train_city

pytestmark = pytest.mark.slow

CITY = "demo-5"


def quiet(msg: str) -> None:
    pass


def trained_epochs(logs: list[str]) -> list[str]:
    return [m for m in logs if " epoch " in m]


@pytest.fixture(scope="module")
def small_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from musecl_store.demo import make_demo_city

    out = tmp_path_factory.mktemp("small") / "city"
    make_demo_city(out, seed=5, regions=20)
    return out


@pytest.fixture(scope="module")
def other_city(small_city: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same city (name and all) with one POI's text changed."""
    out = tmp_path_factory.mktemp("other") / "city"
    shutil.copytree(small_city, out)
    with (out / "pois.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows[0]["text"] = rows[0]["text"] + " (renovated)"
    with (out / "pois.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def fresh_store(backend, bundle: Path) -> Engine:
    engine = create_engine(backend.new_url())
    with transaction(engine) as s:
        ingest_bundle(s, bundle)
    return engine


@dataclass
class FirstRun:
    url: str
    config: TrainConfig
    run_dir: Path
    fused: np.ndarray
    logs: list[str]
    connections_in_use: list[int]  # the trainer's, seen mid-training


@pytest.fixture(scope="module")
def first_run(
    backend: Backend, small_city: Path, tmp_path_factory: pytest.TempPathFactory
) -> FirstRun:
    """One full training of the small city. Mid-training, another engine writes to the
    store: it edits the city, caches the city's POI text embeddings (as a concurrent run would)
    and, on PostgreSQL, takes an exclusive lock on the regions table, which any open
    transaction that read regions would block."""
    url = backend.new_url()
    engine = create_engine(url)
    with transaction(engine) as s:
        ingest_bundle(s, small_city)
    other = create_engine(url)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    logs: list[str] = []
    in_use: list[int] = []

    def log(msg: str) -> None:
        logs.append(msg)
        if msg.startswith("remote epoch") and not in_use:
            in_use.append(pool.checkedout())
            with transaction(other) as s:
                if backend.name == "postgis":
                    s.execute(text("LOCK TABLE regions IN ACCESS EXCLUSIVE MODE NOWAIT"))
                city = get_city(s, CITY)
                city.meta = {**city.meta, "note": "written while training"}
                data = load_city_data(s, CITY, mobility=False)
                text_embeddings(s, TextEncoder(), data.poi_sentence, data.poi_hash)

    cfg = TrainConfig.from_dict(
        {**FAST, "checkpoint_dir": str(tmp_path_factory.mktemp("ckpt") / "runs")}
    )
    result = train_city(engine, CITY, cfg, log=log)
    with transaction(engine) as s:
        _, fused = load_embeddings(s, result.model_version_id, "fused")
    engine.dispose()
    other.dispose()
    return FirstRun(url, cfg, result.run_dir, fused, logs, in_use)


def test_training_holds_no_transaction_and_the_store_stays_writable(
    first_run: FirstRun,
) -> None:
    assert first_run.connections_in_use == [0]
    engine = create_engine(first_run.url)
    with transaction(engine) as s:
        assert get_city(s, CITY).meta["note"] == "written while training"
        mv = s.scalars(select(ModelVersion)).one()
        assert mv.active and mv.metrics["history"]["remote"]
        # The other writer cached the texts first; the run added none twice.
        data = load_city_data(s, CITY, mobility=False)
        cached = s.scalar(select(func.count()).select_from(TextEmbedding))
        assert cached == len(set(zip(data.poi_hash, data.poi_sentence, strict=True)))
    engine.dispose()


def test_finished_run_is_reused_in_a_fresh_store(
    backend: Backend, first_run: FirstRun, small_city: Path
) -> None:
    engine = fresh_store(backend, small_city)
    logs: list[str] = []
    result = train_city(engine, CITY, first_run.config, log=logs.append)
    assert any(m.startswith("reusing the finished run") for m in logs), logs
    assert trained_epochs(logs) == []
    assert result.run_dir == first_run.run_dir and result.model_version_id == 1
    with transaction(engine) as s:
        _, fused = load_embeddings(s, 1, "fused")
    np.testing.assert_allclose(fused, first_run.fused, atol=1e-6)
    engine.dispose()


def test_cli_trains_again_after_models_delete(
    backend: Backend, first_run: FirstRun, tmp_path: Path
) -> None:
    url = backend.clone(first_run.url)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(first_run.config.to_dict()))
    runner = CliRunner()

    def cli(*args: str) -> tuple[str, str]:
        out = runner.invoke(main, ["--db", url, *args])
        assert out.exit_code == 0, out.output
        return out.stdout, out.output

    def train() -> int:
        stdout, output = cli("train", "--city", CITY, "--config", str(cfg), "--json")
        assert "reusing the finished run" in output and " epoch " not in output
        version: int = json.loads(stdout)["model_version"]
        return version

    again = train()  # the checkpoint says "done": reused, into a new version
    assert again != 1
    cli("models", "activate", "1")
    cli("models", "delete", str(again))
    after_delete = train()
    engine = create_engine(url)
    with transaction(engine) as s:
        versions = s.execute(select(ModelVersion.id, ModelVersion.active)).all()
        assert sorted(versions) == [(1, False), (after_delete, True)]
        _, fused = load_embeddings(s, after_delete, "fused")
    np.testing.assert_allclose(fused, first_run.fused, atol=1e-6)
    engine.dispose()


def test_run_id_follows_the_content_not_the_name_or_revision(
    backend: Backend, first_run: FirstRun, small_city: Path, other_city: Path
) -> None:
    same, other = fresh_store(backend, small_city), fresh_store(backend, other_city)
    contents: list[str] = []
    revisions: list[int] = []
    for engine in (same, other):
        with transaction(engine) as s:
            data = load_city_data(s, CITY)
            content = city_content(s, data)
            assert content is not None
            contents.append(content)
            revisions.append(data.city.revision)
    assert revisions[0] == revisions[1]  # same name, same revision number ...
    assert contents[0] != contents[1]  # ... other content
    cfg = first_run.config
    assert run_id(cfg, contents[0]) != run_id(cfg, contents[1])
    # Where checkpoints live is not part of the run.
    moved = TrainConfig.from_dict({**cfg.to_dict(), "checkpoint_dir": "elsewhere"})
    assert run_id(moved, contents[0]) == run_id(cfg, contents[0])
    assert first_run.run_dir.name == run_id(cfg, contents[0])

    class Stop(Exception):
        pass

    logs: list[str] = []

    def log(msg: str) -> None:
        logs.append(msg)
        if msg.startswith("remote epoch"):
            raise Stop  # it trains from scratch: enough seen

    with pytest.raises(Stop):
        train_city(other, CITY, cfg, log=log)
    assert not any(m.startswith(("reusing", "resuming")) for m in logs)
    assert logs[-1].startswith("remote epoch 1:")
    same.dispose()
    other.dispose()


def test_city_changed_while_training_is_not_written(
    backend: Backend, first_run: FirstRun, small_city: Path
) -> None:
    engine = fresh_store(backend, small_city)
    with session_factory(engine)() as s:
        trainer = Trainer(s, CITY, first_run.config, log=quiet)  # reuses the finished run
    fitted = trainer.fit()
    with transaction(engine) as s:  # as if an ingest changed one region's POIs meanwhile
        s.execute(
            update(Region)
            .where(Region.region_id == trainer.data.region_ids[0])
            .values(hash_poi="0" * 32)
        )
    with (
        pytest.raises(TrainingError, match="re-ingested with other data while it trained"),
        transaction(engine) as s,
    ):
        trainer.write(s, fitted)
    with transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    engine.dispose()


# ------------------------------------------------------------------------------ devices


def test_device_choice(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu'; use one of auto, cpu, cuda"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="sees no CUDA GPU; train with --device cpu"):
        resolve_device("cuda")
    out = CliRunner().invoke(main, ["--db", db_url, "train", "--city", CITY, "--device", "cuda"])
    assert out.exit_code == 1 and "sees no CUDA GPU" in out.output
    assert "Traceback" not in out.output


def test_checkpoint_state_is_copied_to_the_cpu() -> None:
    net = torch.nn.BatchNorm1d(3)
    state = {"net": net.state_dict(), "opt": {"state": {0: {"step": torch.tensor(1.0)}}}}
    saved = _on_cpu(state)
    assert isinstance(saved["net"], OrderedDict)
    assert getattr(saved["net"], "_metadata") == getattr(state["net"], "_metadata")  # noqa: B009
    assert saved["opt"]["state"][0]["step"].item() == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_checkpoints_on_the_cpu_and_resumes_there(
    backend: Backend, small_city: Path, tmp_path: Path
) -> None:
    engine = fresh_store(backend, small_city)
    cfg = TrainConfig.from_dict({**FAST, "checkpoint_dir": str(tmp_path / "ckpt")})
    result = train_city(engine, CITY, cfg, device="cuda", log=quiet)
    state = torch.load(result.run_dir / "state.pt", weights_only=True)  # no map_location

    def tensors(obj: object) -> list[torch.Tensor]:
        if isinstance(obj, torch.Tensor):
            return [obj]
        if isinstance(obj, dict):
            return [t for v in obj.values() for t in tensors(v)]
        if isinstance(obj, list | tuple):
            return [t for v in obj for t in tensors(v)]
        return []

    assert state["stage"] == "done" and tensors(state)
    assert all(t.device.type == "cpu" for t in tensors(state))
    with transaction(engine) as s:
        for kind in ("remote", "street", "poi", "fused"):
            _, mat = load_embeddings(s, result.model_version_id, kind)
            assert len(mat) and np.isfinite(mat).all()
    logs: list[str] = []
    again = train_city(engine, CITY, cfg, device="cpu", log=logs.append)
    assert any(m.startswith("reusing the finished run") for m in logs)
    assert again.model_version_id == result.model_version_id + 1
    engine.dispose()
