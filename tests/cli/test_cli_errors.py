"""What a new user tried and got a traceback (or a silent mistake) for, each now a clear error;
the exit codes (1: the user's input or the store, 2: usage or a bug); writers that wait for
each other instead of failing; fault points that a user's environment cannot switch on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from musecl_store.api import Store
from musecl_store.cli import main
from musecl_store.store.engine import create_engine, transaction

ROOT = Path(__file__).parents[2]
CITY = "demo-3"


def run(*args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `musecl ARGS` run in-process."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.mark.slow
def test_bad_paths_and_values_name_the_argument(trained: str, tmp_path: Path) -> None:
    db = ["--db", trained]
    code, out = run(*db, "export", "--city", CITY, "--format", "csv", "--out", "/no/such/d/x.csv")
    assert code == 1 and "/no/such/d/x.csv" in one_line_error(out)
    locked = tmp_path / "ro"
    locked.mkdir()
    (locked / "x.png").mkdir()  # a folder where the file should go
    code, out = run(
        *db, "map", "--city", CITY, "--indicator", "crime", "--out", str(locked / "x.png")
    )
    assert code == 2 and "x.png" in out and "is a directory" in out  # click's usage check
    code, out = run(*db, "map", "--city", CITY, "--indicator", "crime", "--out", "/nope/m.png")
    assert code == 1 and "/nope/m.png" in one_line_error(out)

    pts = tmp_path / "pts.csv"
    pts.write_text("lon,lat\n8.5,47.3\n8.6\n")
    code, out = run(*db, "features", "--city", CITY, "--points", str(pts))
    assert code == 1 and f"{pts}:3" in one_line_error(out)
    pts.write_text("lon,lat\n8.5,100\n")
    code, out = run(*db, "features", "--city", CITY, "--points", str(pts))
    assert code == 1 and f"{pts}:2" in one_line_error(out)
    pts.write_text("lon,lat\n8.5,abc\n")
    code, out = run(*db, "features", "--city", CITY, "--points", str(pts))
    assert code == 1 and f"{pts}:2" in one_line_error(out)

    code, out = run(*db, "similar", "--city", CITY, "--point", "8.5,47.3", "--bbox", "0,0,200,1")
    assert code == 2 and "--bbox" in out
    code, out = run(*db, "similar", "--city", CITY, "--point", "8.5,47.3", "--same-city",
                    "--other-cities")  # fmt: skip
    assert code == 2 and "--same-city and --other-cities" in out and "same_city" not in out
    code, out = run(*db, "reembed", "--city", CITY, "--since", "999")
    assert code == 1 and "revision 999 does not exist" in one_line_error(out)
    code, out = run(*db, "--lock-timeout", "soon", "cities")
    assert code == 2 and "--lock-timeout" in out


def test_stores_that_are_not_there_or_not_stores(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.sqlite"
    code, out = run("--db", str(missing), "cities")
    assert code == 1 and "no store at" in one_line_error(out)
    assert not (tmp_path / "no").exists()  # a typo never makes a directory or an empty store
    junk = tmp_path / "notes.txt"
    junk.write_text("these are my notes, not a database\n" * 100)
    code, out = run("--db", str(junk), "cities")
    assert code == 1 and "is not a musecl store" in one_line_error(out)
    assert junk.read_text().startswith("these are my notes")  # and it is left alone


def test_a_bug_is_reported_as_one_with_exit_2(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    def broken(self: Store) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Store, "cities", broken)
    result = CliRunner().invoke(main, ["--db", db_url, "cities"])
    assert result.exit_code == 2
    assert "This is a bug in musecl" in result.output and "Traceback" in result.output
    assert "ZeroDivisionError" in result.output


def _hold_write_lock(url: str, seconds: float, marker: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys, time; from pathlib import Path\n"
        "from musecl_store.store.engine import create_engine, transaction\n"
        "e = create_engine(sys.argv[1])\n"
        "with transaction(e, write=True) as s:\n"
        "    Path(sys.argv[3]).touch(); time.sleep(float(sys.argv[2]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, url, str(seconds), str(marker)], cwd=ROOT)
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_writer_waits_then_writes_or_gives_up_clearly(
    trained: str, backend, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    url = backend.clone(trained)
    musecl = [sys.executable, "-m", "musecl_store.cli", "--db", url]
    env = {**os.environ, "MUSECL_INDEX_DIR": str(tmp_path / "idx")}

    holder = _hold_write_lock(url, 4, tmp_path / "a")
    started = time.time()
    done = subprocess.run(
        [*musecl, "models", "activate", "1"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "waiting for it to finish" in done.stderr and time.time() - started > 2
    holder.wait(30)

    holder = _hold_write_lock(url, 6, tmp_path / "b")
    gave_up = subprocess.run(
        [*musecl, "--lock-timeout", "1", "models", "activate", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    holder.wait(30)
    assert gave_up.returncode == 1
    assert "kept the store's write lock for more than 1 s" in gave_up.stderr
    assert "Traceback" not in gave_up.stderr
    engine = create_engine(url)
    with transaction(engine) as s:  # readers never waited, and the store is whole
        from musecl_store.store.check import check_store

        assert check_store(s).ok
    engine.dispose()


def test_fault_points_are_inert_for_users(db_url: str, tiny_bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    env = {
        **os.environ,
        "MUSECL_FAULT": "ingest:read",
        "MUSECL_PAUSE": f"ingest:read:{marker}:30",
        "MUSECL_INDEX_DIR": str(tmp_path / "idx"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "musecl_store.cli", "--db", db_url, "ingest", str(tiny_bundle)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
