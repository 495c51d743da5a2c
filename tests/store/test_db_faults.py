"""The database fails under a command: PostgreSQL restarts mid-write and mid-search, and a
SpatiaLite store's disk fills up mid-ingest.

Each failed command must exit 1 with a one-line error that says what happened (no Python
traceback), leave nothing of its work in the store (row counts of every table unchanged), and
the next command must work without any manual repair.

PostgreSQL: the restarts happen on a PRIVATE throw-away cluster (``initdb`` into a temporary
folder, a Unix socket only), never on the shared server of ``MUSECL_TEST_PG_URL``; the trained
test store is copied there with ``pg_dump``/``pg_restore``. These tests run with the postgis
backend; without the server binaries (``initdb``, ``pg_ctl``; ``MUSECL_TEST_PG_BIN`` names
their folder) they are skipped. A command is caught in its write by a hook at one of the
library's fault points (:mod:`musecl_store.faults`), through the tests' CLI driver
``tests/faultcli.py`` (``MUSECL_PAUSE=POINT:MARKER:SECONDS``).

SpatiaLite: the store lies on a small tmpfs (we mount one; without the right to mount, the
command runs under an RLIMIT_FSIZE instead) and the ingest of a second city does not fit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CITY = "demo-3"
K = 5


# ---------------------------------------------------------------------------- helpers


def _env(index_dir: Path) -> dict[str, str]:
    return {**os.environ, "MUSECL_INDEX_DIR": str(index_dir), "MUSECL_PROGRESS": "0"}


def _cli(
    url: str, index_dir: Path, *args: str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "musecl_store.cli", "--db", url, *args],
        capture_output=True,
        text=True,
        env=_env(index_dir),
        cwd=REPO,
        timeout=300,
        preexec_fn=preexec,
    )


def _paused(
    point: str, marker: Path, seconds: float, url: str, index_dir: Path, *args: str
) -> subprocess.Popen[str]:
    """A `musecl` command that sleeps ``seconds`` at fault point ``point`` (inside its
    transaction) after touching ``marker``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faultcli", "--db", url, *args],
        cwd=REPO,
        env={**_env(index_dir), "MUSECL_PAUSE": f"{point}:{marker}:{seconds}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(marker: Path, proc: subprocess.Popen[str], limit: float = 300) -> None:
    deadline = time.time() + limit
    while not marker.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the command ended ({proc.returncode}) before its fault point:\n{err}")
        assert time.time() < deadline, "the command never reached its fault point"
        time.sleep(0.05)


def _assert_clean_failure(rc: int | None, stderr: str, about: str) -> str:
    """Exit code 1 and one line of error, the last one, saying ``about`` (a regex)."""
    assert rc == 1, f"exit code {rc}, not 1:\n{stderr[-4000:]}"
    assert "Traceback" not in stderr, f"a Python traceback:\n{stderr[-4000:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert errors, f"no error message:\n{stderr[-4000:]}"
    assert errors == [len(lines) - 1], f"the error must be one line, the last:\n{stderr[-4000:]}"
    assert re.search(about, lines[-1], re.IGNORECASE), f"the error does not say {about}: {lines}"
    print(f"clean failure: {lines[-1]}")  # shown with -s
    return lines[-1]


def _engine(url: str) -> sa.Engine:
    if make_url(url).get_backend_name() == "sqlite":
        from musecl_store.store.engine import create_engine

        return create_engine(url)  # disposed after each use: no connection stays open
    return sa.create_engine(url, poolclass=NullPool)


def _counts(url: str) -> dict[str, int]:
    """Rows per store table."""
    from musecl_store.store.tables import Base

    engine = _engine(url)
    try:
        with engine.connect() as c:
            return {
                t.name: int(c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _per_region_kind(url: str) -> dict[tuple[int, int, str], int]:
    from musecl_store.store.tables import Embedding

    engine = _engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                sa.select(
                    Embedding.region_pk,
                    Embedding.model_version_id,
                    Embedding.kind,
                    sa.func.count(),
                ).group_by(Embedding.region_pk, Embedding.model_version_id, Embedding.kind)
            ).all()
        return {(pk, mv, kind): n for pk, mv, kind, n in rows}
    finally:
        engine.dispose()


def _fused(url: str, index_dir: Path) -> dict[str, bytes]:
    import musecl_store
    from musecl_store.store.vectors import load_embeddings

    with musecl_store.open(url, index_dir=index_dir) as store:
        mv = store.active_model_version(CITY)
        with store.session() as s:
            ids, mat = load_embeddings(s, mv, "fused")
    return {r: v.tobytes() for r, v in zip(ids, mat, strict=True)}


@pytest.fixture(scope="module")
def second_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another demo city (demo-4, ~40 regions) to ingest into the trained store."""
    from musecl_store.demo import make_demo_city

    out = tmp_path_factory.mktemp("city4") / "city"
    make_demo_city(out, seed=4, regions=40, show_progress=False)
    return out


# ---------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: MUSECL_TEST_PG_BIN, the newest
    /usr/lib/postgresql/*/bin, or the PATH."""
    if os.environ.get("MUSECL_TEST_PG_BIN"):
        candidates = [Path(os.environ["MUSECL_TEST_PG_BIN"])]
    else:
        found = Path("/usr/lib/postgresql").glob("*/bin")
        version = {p: int(p.parent.name) if p.parent.name.isdigit() else 0 for p in found}
        candidates = sorted(version, key=version.__getitem__, reverse=True)
        if shutil.which("initdb"):
            candidates.append(Path(shutil.which("initdb") or "").parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throw-away PostgreSQL cluster listening on a Unix socket in its own folder."""

    def __init__(self, bindir: Path, root: Path):
        self.bin, self.root = bindir, root
        self.data, self.sock, self.log = root / "data", root / "sock", root / "server.log"
        self.port = _free_port()
        self.options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses='' -c fsync=off "
            "-c shared_buffers=16MB -c max_connections=60"
        )

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)}: exit {r.returncode}\n{r.stderr}\n{log}")

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "-N"
        )
        self.sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.sock, "postgres", "postgres")

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self.options,
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self.sock}&port={self.port}"

    def execute(self, statement: str, db: str = "postgres") -> None:
        engine = sa.create_engine(self.url(db), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.exec_driver_sql(statement)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): set MUSECL_TEST_PG_BIN")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root needs a `postgres` OS user (initdb refuses root)")
        if shutil.which("runuser") is None:
            pytest.skip("running as root needs `runuser` to start PostgreSQL as postgres")
    root = Path(tempfile.mkdtemp(prefix="musecl-pg-"))  # not under pytest's 0700 folders
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(bindir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # not running
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _pg_args(url: str) -> list[str]:
    u = make_url(url)
    host = u.query.get("host") or u.host or "localhost"
    host = host[0] if isinstance(host, tuple) else host
    port = u.query.get("port") or u.port or 5432
    port = port[0] if isinstance(port, tuple) else port
    user, db = u.username or "postgres", u.database or ""
    return ["-h", str(host), "-p", str(port), "-U", user, "-d", db]


@pytest.fixture(scope="module")
def pg_template(backend, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    """The trained test store, copied into the private cluster (a template database)."""
    if backend.name != "postgis":
        pytest.skip("PostgreSQL restarts: run with the postgis backend")
    trained: str = request.getfixturevalue("trained")
    cluster: PrivatePostgres = request.getfixturevalue("private_pg")
    dump = cluster.root / "trained.dump"
    env = {**os.environ}
    if make_url(trained).password:
        env["PGPASSWORD"] = str(make_url(trained).password)
    subprocess.run(
        [str(cluster.bin / "pg_dump"), "-Fc", "--no-owner", "-f", str(dump), *_pg_args(trained)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    cluster.execute('CREATE DATABASE "musecl_trained"')
    r = subprocess.run(
        [
            *(str(cluster.bin / "pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error"),
            *(*_pg_args(cluster.url("musecl_trained")), str(dump)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return "musecl_trained"


_n = itertools.count()


@pytest.fixture
def pg_url(private_pg: PrivatePostgres, pg_template: str) -> str:
    """A fresh copy of the trained store on the private cluster."""
    db = f"musecl_f{next(_n)}"
    private_pg.execute(f'CREATE DATABASE "{db}" TEMPLATE "{pg_template}"')
    return private_pg.url(db)


PG_ERROR = r"database|server|connection|postgres"


def test_restart_during_an_ingest(
    private_pg: PrivatePostgres, pg_url: str, second_city: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "idx"
    before = _counts(pg_url)
    marker = tmp_path / "paused"
    proc = _paused(
        "ingest:modalities", marker, 4, pg_url, index_dir, "ingest", str(second_city), "--json"
    )
    _wait_for(marker, proc)  # regions and their POIs, images, trips are written, not committed
    private_pg.restart("fast")
    _out, err = proc.communicate(timeout=300)
    _assert_clean_failure(proc.returncode, err, PG_ERROR)
    assert _counts(pg_url) == before  # nothing of it was committed

    again = _cli(pg_url, index_dir, "ingest", str(second_city), "--json")  # no repair needed
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["city"] == "demo-4"
    after = _counts(pg_url)
    assert after["cities"] == before["cities"] + 1 and after["regions"] > before["regions"]


def test_restart_during_a_reembed(
    private_pg: PrivatePostgres, pg_url: str, demo_bundle: Path, tmp_path: Path
) -> None:
    import musecl_store
    from musecl_store.search.index import RegionIndex
    from tests.embedding.test_reembed import edit_bundle

    index_dir = tmp_path / "idx"
    edited = edit_bundle(demo_bundle, tmp_path / "edited")
    with musecl_store.open(pg_url, index_dir=index_dir) as store:
        store.ingest(tmp_path / "edited")
        store.build_index(CITY)
    before, vectors = _counts(pg_url), _fused(pg_url, index_dir)
    marker = tmp_path / "paused"
    proc = _paused("reembed:written", marker, 4, pg_url, index_dir, "reembed", "--city", CITY)
    _wait_for(marker, proc)  # every new vector is written, not committed
    private_pg.restart("immediate")  # as a crash: no shutdown checkpoint, recovery on start
    _out, err = proc.communicate(timeout=300)
    _assert_clean_failure(proc.returncode, err, PG_ERROR)
    assert _counts(pg_url) == before
    assert _fused(pg_url, index_dir) == vectors  # every region keeps its old vector

    again = _cli(pg_url, index_dir, "reembed", "--city", CITY, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["regions"] == len(edited)
    assert set(_per_region_kind(pg_url).values()) == {1}  # one per (region, version, kind)
    changed = {r for r, v in _fused(pg_url, index_dir).items() if v != vectors[r]}
    assert changed and changed <= edited
    with musecl_store.open(pg_url, index_dir=index_dir) as store, store.session() as s:
        assert RegionIndex.open(s, index_dir, store.active_model_version(CITY)).is_current(s)


def test_restart_during_searches(private_pg: PrivatePostgres, pg_url: str, tmp_path: Path) -> None:
    """A long-lived Store searching in a loop (as `musecl serve`) and `musecl similar` runs,
    while the server restarts, then is down for a while: every failure is a clean database
    error; once the server is back, searches work again in the same process and in new ones."""
    import musecl_store

    index_dir = tmp_path / "idx"
    with musecl_store.open(pg_url, index_dir=index_dir) as store:
        store.build_index(CITY)
        rid = str(store.regions(CITY).region_id[0])
    log, stop = tmp_path / "searches.jsonl", tmp_path / "stop"
    loop = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.store.test_db_faults", "search-loop"),
            *(pg_url, rid, str(log), str(stop)),
        ],
        cwd=REPO,
        env=_env(index_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs: list[tuple[float, float, subprocess.CompletedProcess[str]]] = []
    halt = threading.Event()

    def cli_searches() -> None:
        while not halt.is_set():
            t0 = time.time()
            r = _cli(pg_url, index_dir, "similar", "--city", CITY, rid, "-k", str(K), "--json")
            runs.append((t0, time.time(), r))

    def records() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        lines = log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait(what: str, cond: Callable[[], bool], limit: float = 180) -> None:
        deadline = time.time() + limit
        while not cond():
            assert loop.poll() is None, f"the search loop died:\n{loop.communicate()[1]}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    cli = threading.Thread(target=cli_searches)
    try:
        wait("the search loop", lambda: sum(r["ok"] for r in records()) >= 3)
        cli.start()
        private_pg.restart("fast")  # in the middle of the loop's queries
        time.sleep(1.0)
        private_pg.stop("fast")
        down = time.time()
        wait(
            "a `musecl similar` while the server is down",
            lambda: any(t0 >= down for t0, _, _ in runs),
        )
        private_pg.start()
        up = time.time()
        wait(
            "searches after the restart",
            lambda: (
                any(t0 >= up for t0, _, _ in runs)
                and sum(r["ok"] and r["t"] >= up for r in records()) >= 3
            ),
        )
    finally:
        halt.set()
        stop.touch()
        if cli.is_alive():
            cli.join(timeout=300)
        try:
            _out, loop_err = loop.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            loop.kill()
            _out, loop_err = loop.communicate()

    # the long-lived process: never crashed, failed only with database errors, recovered
    assert loop.returncode == 0 and "Traceback" not in loop_err, loop_err[-4000:]
    recs = records()
    failed = [r for r in recs if not r["ok"]]
    print(f"searches: {len(recs)}, failed: {len(failed)}, CLI runs: {len(runs)}")
    for r in failed[:1] + failed[-1:]:
        print(f"  {r['types'][0]}: {r['message']}")
    assert any(down <= r["t"] <= up for r in failed), "no search failed while the server was down"
    wrong = [r for r in failed if not {"MuseclError", "DBAPIError"} & set(r["types"])]
    assert not wrong, f"searches failed with other than a database error: {wrong[:3]}"
    assert all(r["hits"] == K for r in recs if r["ok"])
    assert recs[-1]["ok"], recs[-3:]
    # the CLI: every run either answered or failed cleanly; one failed while down; all after up
    # answered
    for _t0, _t1, r in runs:
        if r.returncode == 0:
            assert len(json.loads(r.stdout)) == K
        else:
            _assert_clean_failure(r.returncode, r.stderr, PG_ERROR)
    assert any(r.returncode == 1 and down <= t0 and t1 <= up for t0, t1, r in runs), (
        "no `musecl similar` ran while the server was down"
    )
    late = [r for t0, _, r in runs if t0 >= up]
    assert late and all(r.returncode == 0 for r in late), [r.stderr for r in late]


# ---------------------------------------------------------------------------- a full disk


class SmallDisk:
    """A tmpfs of a given size at ``path`` (mounted when we may), unmounted at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.mounted = False

    def mount(self, size: int) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return False
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        self.mounted = r.returncode == 0
        return self.mounted

    def grow(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )

    def unmount(self) -> None:
        if self.mounted:
            r = subprocess.run(["umount", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.unmount()


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For a child process: no file may grow past ``limit`` bytes (writes fail with EFBIG)."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _integrity(url: str) -> list[Any]:
    engine = _engine(url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.exec_driver_sql("PRAGMA integrity_check").all()]
    finally:
        engine.dispose()


def test_a_full_disk_leaves_the_sqlite_store_intact(  # type: ignore[no-untyped-def]
    backend,
    request: pytest.FixtureRequest,
    second_city: Path,
    small_disk: SmallDisk,
    tmp_path: Path,
) -> None:
    if backend.name != "spatialite":
        pytest.skip("a full disk under a SpatiaLite file: runs with the spatialite backend")
    clone = Path(make_url(backend.clone(request.getfixturevalue("trained"))).database or "")
    index_dir = tmp_path / "idx"  # the FAISS cache is elsewhere: the database's disk fills
    room = 128 * 1024  # free space beside the store: the ingest's write-ahead log needs more
    size = -(-(clone.stat().st_size + 64 * 1024 + room) // 4096) * 4096
    preexec = None
    if small_disk.mount(size):
        store = small_disk.path / "store.sqlite"
        shutil.copyfile(clone, store)
    else:  # no right to mount: the same through a file size limit on the command
        store, preexec = clone, _file_size_limit(room)
    url = f"sqlite:///{store}"
    before = _counts(url)

    full = _cli(url, index_dir, "ingest", str(second_city), "--json", preexec=preexec)
    _assert_clean_failure(full.returncode, full.stderr, r"disk|space|full|too large")
    assert _integrity(url) == [("ok",)]
    assert _counts(url) == before
    found = _cli(url, index_dir, "features", "--city", CITY)  # still readable and searchable
    assert found.returncode == 0, found.stderr
    rid = found.stdout.splitlines()[1].split(",")[0]
    hits = _cli(url, index_dir, "similar", "--city", CITY, rid, "-k", str(K), "--json")
    assert hits.returncode == 0, hits.stderr
    assert len(json.loads(hits.stdout)) == K

    # with room again, the same command works: nothing to repair first
    if small_disk.mounted:
        small_disk.grow(size + 64 * 1024 * 1024)
    again = _cli(url, index_dir, "ingest", str(second_city), "--json")
    assert again.returncode == 0, again.stderr
    assert _integrity(url) == [("ok",)]
    after = _counts(url)
    assert after["cities"] == before["cities"] + 1 and after["regions"] > before["regions"]


# ---------------------------------------------------------------------------- drivers


def _search_loop(argv: list[str]) -> None:
    """``URL REGION LOG STOP``: one Store searching until STOP exists; one JSON line per
    search in LOG."""
    import musecl_store

    url, rid, log, stop = argv[0], argv[1], Path(argv[2]), Path(argv[3])
    with musecl_store.open(url) as store, log.open("a") as out:
        while not stop.exists():
            t = time.time()
            rec: dict[str, Any] = {"t": t, "ok": True, "hits": 0}
            try:
                rec["hits"] = len(store.search(CITY, rid, k=K))
            except Exception as exc:  # recorded, judged by the test
                rec.update(
                    ok=False,
                    types=[c.__name__ for c in type(exc).__mro__],
                    message=str(exc)[:500],
                )
            out.write(json.dumps(rec) + "\n")
            out.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "search-loop":
        _search_loop(sys.argv[2:])
    else:
        sys.exit(f"unknown driver {sys.argv[1]!r}")
