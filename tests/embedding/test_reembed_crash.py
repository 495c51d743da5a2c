"""Crash consistency of `musecl reembed`: SIGKILL at every step, then the store holds, for
every region, the old or the new embedding (never both, never none), the index is caught up
on the next open, and running again finishes the job. A reader during a re-embed always gets
a complete answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from musecl_store.embedding.reembed import STEPS, reembed
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.search.index import RegionIndex
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Embedding
from musecl_store.store.vectors import load_embeddings
from tests.embedding.test_reembed import edit_bundle

pytestmark = pytest.mark.slow


def run_cli(url: str, index_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "MUSECL_INDEX_DIR": str(index_dir), "MUSECL_PROGRESS": "0", **env}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faultcli",
            "--db",
            url,
            "reembed",
            "--city",
            "demo-3",
            "--json",
        ],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )


@pytest.fixture
def prepared(backend, trained: str, demo_bundle: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store whose edited city needs a re-embed, with an index of the state before."""
    url = backend.clone(trained)
    engine = create_engine(url)
    with transaction(engine) as s:
        RegionIndex.open(s, tmp_path / "idx", 1)
        edited = edit_bundle(demo_bundle, tmp_path / "edited")
        ingest_bundle(s, tmp_path / "edited")
    with transaction(engine) as s:
        old = dict(zip(*load_embeddings(s, 1, "fused"), strict=True))
    engine.dispose()
    return url, tmp_path / "idx", old, edited


def rows_per_region(url: str) -> dict[tuple[int, str], int]:
    engine = create_engine(url)
    with transaction(engine) as s:
        out = {
            (pk, kind): n
            for pk, kind, n in s.execute(
                select(Embedding.region_pk, Embedding.kind, func.count())
                .where(Embedding.model_version_id == 1)
                .group_by(Embedding.region_pk, Embedding.kind)
            ).all()
        }
    engine.dispose()
    return out


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_every_step(prepared, step: str) -> None:  # type: ignore[no-untyped-def]
    url, index_dir, old, edited = prepared
    before = rows_per_region(url)
    proc = run_cli(url, index_dir, MUSECL_FAULT=step)
    proc.communicate(timeout=300)
    assert proc.returncode == -9, f"the fault at {step} did not fire"
    assert rows_per_region(url) == before  # exactly one row per region and kind: never 0, never 2
    engine = create_engine(url)
    with transaction(engine) as s:
        now = dict(zip(*load_embeddings(s, 1, "fused"), strict=True))
        changed = {r for r in now if not np.array_equal(now[r], old[r])}
        if STEPS.index(step) < STEPS.index("reembed:committed"):
            assert changed == set()  # killed before the commit: all old
        else:
            assert changed == edited  # committed: every edited region's fused vector is new
        index = RegionIndex.open(s, index_dir, 1)  # caught up (or rebuilt) on open
        assert index.is_current(s)
    # running again finishes the job
    proc = run_cli(url, index_dir)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    with transaction(engine) as s:
        assert reembed(s, "demo-3").regions == []  # nothing left to do
        done = dict(zip(*load_embeddings(s, 1, "fused"), strict=True))
        assert RegionIndex.open(s, index_dir, 1).is_current(s)
    assert {r for r in done if not np.array_equal(done[r], old[r])} == edited
    engine.dispose()


def test_a_reader_during_a_reembed_gets_a_complete_answer(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, index_dir, old, edited = prepared
    marker = tmp_path / "paused"
    proc = run_cli(url, index_dir, MUSECL_PAUSE=f"reembed:written:{marker}:4")
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the writer never paused"
        time.sleep(0.1)
    engine = create_engine(url)
    with transaction(engine) as s:  # the writer holds its transaction open right now
        ids, mat = load_embeddings(s, 1, "fused")
    assert dict(zip(ids, mat, strict=True)).keys() == old.keys()
    assert all(np.array_equal(v, old[r]) for r, v in zip(ids, mat, strict=True))
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, 1, "fused")
    assert len(ids) == len(old) and sum(
        not np.array_equal(v, old[r]) for r, v in zip(ids, mat, strict=True)
    ) == len(edited)
    engine.dispose()
