"""`musecl db check`: sound stores pass, and each kind of damage is found and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from musecl_store.cli import main
from musecl_store.search.index import RegionIndex, check_cache
from musecl_store.store.check import check_store
from musecl_store.store.engine import create_engine, transaction

pytestmark = pytest.mark.slow


def test_a_trained_store_passes(trained: str, tmp_path: Path) -> None:
    engine = create_engine(trained)
    with transaction(engine) as s:
        RegionIndex.open(s, tmp_path / "idx", 1)
        report = check_store(s)
        check_cache(s, tmp_path / "idx", report)
    engine.dispose()
    assert report.ok, report.errors
    assert report.warnings == []
    assert report.checked["embeddings"] > 0 and report.checked["indexes"] == 1
    result = CliRunner().invoke(main, ["--db", trained, "db", "check", "--json", "--no-index"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True


DAMAGE: dict[str, tuple[str, str]] = {
    "embeddings of a model version gone": (
        "DELETE FROM embeddings WHERE model_version_id = 1",
        "model version 1 has no embeddings",
    ),
    "a region lost": (
        "DELETE FROM regions WHERE id = (SELECT MIN(id) FROM regions)",
        "half-ingested",
    ),
    "a revision that does not exist": (
        "UPDATE regions SET revision = 9999 WHERE id = (SELECT MIN(id) FROM regions)",
        "carry a revision that does not exist",
    ),
    "change log out of step": (
        "DELETE FROM region_changes WHERE id = (SELECT MIN(id) FROM region_changes)",
        "change log",
    ),
    "two active versions": (
        "INSERT INTO model_versions (city_id, config, seed, data_revision, library_versions,"
        " metrics, checkpoint_path, active, created_at) SELECT city_id, config, seed,"
        " data_revision, library_versions, metrics, checkpoint_path, active, created_at"
        " FROM model_versions WHERE id = 1",
        "active model versions",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_found(backend, trained: str, damage: str) -> None:  # type: ignore[no-untyped-def]
    url = backend.clone(trained)
    sql, message = DAMAGE[damage]
    engine = create_engine(url)
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            c.exec_driver_sql("PRAGMA foreign_keys = OFF")
        c.exec_driver_sql(sql)
    with transaction(engine) as s:
        report = check_store(s)
    engine.dispose()
    assert not report.ok
    assert any(message in e for e in report.errors), report.errors
    result = CliRunner().invoke(main, ["--db", url, "db", "check"])
    assert result.exit_code == 1 and "DAMAGED" in result.output


def test_index_leftovers_are_warnings(trained: str, tmp_path: Path) -> None:
    engine = create_engine(trained)
    idx = tmp_path / "idx"
    with transaction(engine) as s:
        RegionIndex.open(s, idx, 1)
        (idx / "mv1-fused" / "index-x.faiss.partial").write_bytes(b"half")
        (idx / "mv9-fused").mkdir()
        report = check_store(s)
        check_cache(s, idx, report)
    engine.dispose()
    assert report.ok
    assert any("partial" in w for w in report.warnings)
    assert any("mv9-fused" in w for w in report.warnings)
