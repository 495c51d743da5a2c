"""Reads from a PostgreSQL streaming replica, writes to the primary (``--read-db``).

A private primary (the trained test store copied in) gets a hot standby made with
``pg_basebackup -R``. A reader whose reads go to the standby answers with the old vectors,
a re-embed commits on the primary, and once the standby has replayed it the same reader (its
FAISS cache caught up by the stamped revision) answers with the new ones. A write sent to the
standby is refused with one clear line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import musecl_store
from tests.embedding.test_reembed import edit_bundle
from tests.store.test_db_faults import (  # noqa: F401  (fixtures)
    CITY,
    PrivatePostgres,
    pg_template,
    pg_url,
    private_pg,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


@pytest.fixture
def standby(private_pg: PrivatePostgres, pg_url: str) -> Iterator[PrivatePostgres]:  # noqa: F811
    """A hot standby of the private cluster, streaming from it."""
    root = private_pg.root / f"standby-{time.time_ns()}"
    root.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    replica = PrivatePostgres(private_pg.bin, root)
    replica.sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(replica.sock, "postgres", "postgres")
    replica._run(
        "pg_basebackup",
        *("-D", str(replica.data), "-R", "-X", "stream", "-c", "fast", "-U", "postgres"),
        *("-h", str(private_pg.sock), "-p", str(private_pg.port)),
    )
    replica.start()
    try:
        yield replica
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            replica.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _lsn(url: str, sql: str) -> int:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            text = str(c.exec_driver_sql(sql).scalar())
    finally:
        engine.dispose()
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def test_reads_follow_the_replica_as_it_replays(
    private_pg: PrivatePostgres,  # noqa: F811
    pg_url: str,  # noqa: F811
    standby: PrivatePostgres,
    demo_bundle: Path,
    tmp_path: Path,
) -> None:
    db = str(sa.engine.make_url(pg_url).database)
    replica_url = standby.url(db)
    reader = musecl_store.open(pg_url, index_dir=tmp_path / "reader-idx", read_db=replica_url)
    writer = musecl_store.open(pg_url, index_dir=tmp_path / "writer-idx")
    before = reader.features(CITY).set_index("region_id")

    edited = edit_bundle(demo_bundle, tmp_path / "edited")
    writer.ingest(tmp_path / "edited")
    writer.reembed(CITY)
    new = writer.features(CITY).set_index("region_id")
    assert not np.allclose(new.loc[sorted(edited)], before.loc[sorted(edited)])

    target = _lsn(pg_url, "SELECT pg_current_wal_lsn()")
    deadline = time.time() + 60
    while _lsn(replica_url, "SELECT pg_last_wal_replay_lsn()") < target:
        assert time.time() < deadline, "the standby did not replay the re-embed in 60 s"
        time.sleep(0.2)
    after = reader.features(CITY).set_index("region_id")
    assert np.allclose(after.to_numpy(), new.loc[after.index].to_numpy())
    rid = sorted(edited)[0]
    hits_reader = reader.similar(CITY, rid, k=5)
    hits_writer = writer.similar(CITY, rid, k=5)
    assert list(hits_reader.region_id) == list(hits_writer.region_id)
    reader.close()
    writer.close()

    # a write sent to the standby: one line, exit 1, nothing else
    done = subprocess.run(
        [sys.executable, "-m", "musecl_store.cli", "--db", replica_url, "models", "activate", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MUSECL_INDEX_DIR": str(tmp_path / "x")},
        timeout=120,
    )
    assert done.returncode == 1
    assert "only reads (a streaming replica" in done.stderr and "Traceback" not in done.stderr
