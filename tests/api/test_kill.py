"""Kill -9 at every step of every writing command (re-embed: tests/embedding/test_reembed_crash.py).

For each command, on both backends, the command runs through ``tests/faultcli.py`` and is
SIGKILLed at each of its fault points in turn (``musecl_store.faults.POINTS``). After every
kill ``musecl db check`` passes, and a kill before the commit leaves the database exactly as
it was (every row of every table). Then the command runs to the end and finishes the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import musecl_store
from musecl_store.api import Store
from musecl_store.faults import POINTS
from musecl_store.store.engine import create_engine, transaction
from tests.conftest import FAST_TRAINING, snapshot
from tests.embedding.test_reembed import edit_bundle

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
CITY = "demo-3"


class Runner:
    """Runs ``musecl`` (with the fault hook) against one store and checks it after a kill."""

    def __init__(self, url: str, workdir: Path):
        self.url, self.workdir = url, workdir
        self.index_dir = workdir / "idx"
        self.kills: dict[str, int] = {}

    def run(self, *args: str, fault: str | None = None) -> int:
        env = {
            **os.environ,
            "MUSECL_INDEX_DIR": str(self.index_dir),
            "MUSECL_PROGRESS": "0",
            "MUSECL_FAULT": fault or "",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "tests.faultcli", "--db", self.url, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if fault is None:
            assert proc.returncode == 0, f"musecl {' '.join(args)}: {proc.stderr}"
        else:
            assert proc.returncode == -9, f"the fault at {fault} did not fire: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc.returncode

    def check(self) -> dict[str, object]:
        with self.store() as store:
            report = store.check().to_dict()
        assert report["ok"], report["errors"]
        return report

    def store(self) -> Store:
        return musecl_store.open(self.url, index_dir=self.index_dir)

    def snapshot(self) -> dict[str, list[tuple[object, ...]]]:
        engine = create_engine(self.url)
        try:
            return snapshot(engine)
        finally:
            engine.dispose()

    def kill_at_every_point(
        self,
        command: str,
        args: list[str],
        *,
        committed: str | None,
    ) -> None:
        """Kill at each point (the exit status -9 proves it was reached), check; before
        ``committed`` nothing may change. Then run to the end."""
        points = POINTS[command]
        before = self.snapshot()
        for point in points:
            self.run(*args, fault=point)
            self.kills[point] = self.kills.get(point, 0) + 1
            self.check()
            if committed is not None and points.index(point) < points.index(committed):
                assert self.snapshot() == before, f"a kill at {point} changed the database"
        self.run(*args)  # the command, run again, finishes the job
        self.check()


@pytest.fixture
def runner(backend, trained: str, tmp_path: Path) -> Runner:  # type: ignore[no-untyped-def]
    return Runner(backend.clone(trained), tmp_path)


def test_ingest(runner: Runner, demo_bundle: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    edit_bundle(demo_bundle, edited)
    runner.kill_at_every_point("ingest", ["ingest", str(edited)], committed="ingest:committed")
    with runner.store() as store:  # done: nothing left to ingest
        again = store.ingest(edited, check=True)
    assert again.revision is None and again.regions["updated"] == 0


def test_train(runner: Runner, tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({**FAST_TRAINING, "checkpoint_dir": str(tmp_path / "ckpt")}))
    with runner.store() as store:
        versions = {m["model_version"] for m in store.models(CITY)}
    runner.kill_at_every_point(
        "train", ["train", "--city", CITY, "--config", str(config)], committed="train:committed"
    )
    with runner.store() as store:
        models = store.models(CITY)
    new = {m["model_version"] for m in models} - versions
    assert len(new) == 2  # the kill after the commit kept its version; the rerun added one
    assert sum(m["active"] for m in models) == 1


def test_embed_regress_predict_census(runner: Runner) -> None:
    runner.kill_at_every_point(
        "embed", ["embed", "--city", CITY, "--model-version", "1"], committed="embed:committed"
    )
    fit = ["regress", "fit", "--city", CITY, "--indicator", "crime", "--head", "ridge"]
    runner.kill_at_every_point("regress", fit, committed="regress:committed")
    with runner.store() as store:
        (regressor,) = [r["regressor"] for r in store.regressors()]
    runner.kill_at_every_point(
        "predict",
        ["regress", "predict", "--regressor", regressor, "--city", CITY],
        committed="predict:committed",
    )
    runner.kill_at_every_point(
        "census",
        ["census", "join", "--city", CITY, "--layer", "tracts", "--extensive", "population"],
        committed="census:committed",
    )


def test_index_build_and_models(runner: Runner) -> None:
    build = ["index", "build", "--city", CITY]
    runner.run(*build)
    runner.kill_at_every_point("index", build, committed=None)
    engine = create_engine(runner.url)
    with transaction(engine) as s:
        from musecl_store.search.index import RegionIndex

        assert RegionIndex.open(s, runner.index_dir, 1).is_current(s)
        _copy_model_version(s, 1)  # a second, inactive version (2) to switch to
    engine.dispose()
    runner.kill_at_every_point(
        "activate", ["models", "activate", "2"], committed="models:activate_committed"
    )
    with runner.store() as store:
        assert store.active_model_version(CITY) == 2
    runner.kill_at_every_point(
        "delete", ["models", "delete", "1"], committed="models:delete_committed"
    )
    with runner.store() as store:
        assert [m["model_version"] for m in store.models(CITY)] == [2]
    assert not list(runner.index_dir.glob("mv1-*"))  # its caches went with it


def _copy_model_version(s, source: int) -> int:  # type: ignore[no-untyped-def]
    from musecl_store.store.tables import ModelVersion, Region, Revision
    from musecl_store.store.vectors import load_embeddings, put_embeddings

    mv = s.get(ModelVersion, source)
    copy = ModelVersion(
        city_id=mv.city_id,
        config=mv.config,
        seed=mv.seed,
        data_revision=mv.data_revision,
        library_versions=mv.library_versions,
        metrics=mv.metrics,
        checkpoint_path=mv.checkpoint_path,
        active=False,
    )
    rev = Revision(operation="train", city_id=mv.city_id)
    s.add_all([copy, rev])
    s.flush()
    pk = dict(s.query(Region.region_id, Region.id).all())
    for kind in ("remote", "street", "poi", "fused"):
        ids, mat = load_embeddings(s, source, kind)
        put_embeddings(s, copy.id, kind, [pk[i] for i in ids], mat, rev.id)
    return int(copy.id)
