"""``musecl ingest --check`` is plan without apply: it reports exactly what the ingest would
do, writes nothing, creates no file or schema, and takes no write lock (both backends)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

import musecl_store
from musecl_store.cli import main
from musecl_store.store.engine import create_engine, transaction
from tests.conftest import snapshot


def _summary(summary: musecl_store.api.IngestSummary) -> dict[str, object]:
    out = summary.to_dict()
    out.pop("revision")  # a check writes no revision
    return out


def _edited(bundle: Path, out: Path) -> Path:
    """The bundle with one indicator value changed: one region updated."""
    shutil.copytree(bundle, out)
    lines = (out / "indicators.csv").read_text().splitlines()
    head, first = lines[0].split(","), lines[1].split(",")
    first[1] = str(float(first[1] or 0) + 7.5)
    lines[1] = ",".join(first)
    assert len(head) == len(first)
    (out / "indicators.csv").write_text("\n".join(lines) + "\n")
    return out


def test_check_reports_what_the_ingest_then_does(
    db_url: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    edited = _edited(tiny_bundle, tmp_path / "edited")
    with musecl_store.open(db_url, index_dir=tmp_path / "index") as store:
        for bundle in (tiny_bundle, tiny_bundle, edited, tiny_bundle):
            engine = store.engine()
            before = snapshot(engine)
            checked = store.ingest(bundle, check=True)
            assert snapshot(engine) == before  # the check wrote nothing
            assert checked.revision is None
            done = store.ingest(bundle)
            assert _summary(checked) == _summary(done)
            assert checked.changed == done.changed
        assert done.regions["updated"] == 1


def test_check_of_a_store_that_does_not_exist_creates_nothing(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    path = tmp_path / "none.sqlite"
    result = CliRunner().invoke(
        main, ["--db", str(path), "ingest", str(tiny_bundle), "--check", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["checked_only"] is True and report["regions"]["added"] > 0
    assert report["regions"]["unchanged"] == 0
    assert not path.exists()
    with musecl_store.open(tmp_path / "real.sqlite", index_dir=tmp_path / "ix") as store:
        done = store.ingest(tiny_bundle)
    assert report["regions"] == done.regions


def test_check_of_an_empty_database_creates_no_schema(
    backend, tiny_bundle: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    url = backend.new_url(migrated=False)
    result = CliRunner().invoke(main, ["--db", url, "ingest", str(tiny_bundle), "--check"])
    assert result.exit_code == 0, result.output
    assert "check only, nothing written" in result.output
    engine = sa.create_engine(url)  # a plain connection: nothing loaded, nothing made
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert "cities" not in names and "alembic_version" not in names


def test_check_takes_no_write_lock(db_url: str, tiny_bundle: Path) -> None:
    """Another writer holds the lock for the whole check: the check does not wait for it
    (it used to take the lock, and gave up after --lock-timeout)."""
    engine = create_engine(db_url)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with transaction(engine, write=True):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(30)
        result = CliRunner().invoke(
            main,
            ["--db", db_url, "--lock-timeout", "1", "ingest", str(tiny_bundle), "--check"],
        )
    finally:
        release.set()
        thread.join()
        engine.dispose()
    assert result.exit_code == 0, result.output
    assert "check only, nothing written" in result.output


def test_check_json_keeps_its_keys(db_url: str, tiny_bundle: Path) -> None:
    result = CliRunner().invoke(
        main, ["--db", db_url, "ingest", str(tiny_bundle), "--check", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["checked_only"] is True and report["revision"] is None
    assert {"city", "regions", "counts", "changed"} <= set(report)
