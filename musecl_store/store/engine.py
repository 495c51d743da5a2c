"""Opening the store: a URL or file path becomes an engine for PostGIS or SpatiaLite.

Everything dialect-specific about *connecting* lives here; SQL-level differences live in
:mod:`musecl_store.store.dialect`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# pyproj bundles its own PROJ; mod_spatialite links the system's. When SpatiaLite is loaded
# first, the two PROJ copies' static destructors collide at exit (heap corruption). Loading
# pyproj before any SpatiaLite connection avoids it, so this import must stay here.
import numpy as np
import pyproj  # noqa: F401
import shapely  # noqa: F401  (the same for GEOS: SpatiaLite's system copy must not come first)
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from musecl_store.errors import InputError, LockTimeoutError, ReadOnlyDatabaseError, SetupError
from musecl_store.settings import DEFAULT_DB_FILE, Settings

WRITE_LOCK_KEY = 0x6D757365636C  # "musecl": the PostgreSQL advisory lock every writer takes
_BUSY_MS = 60_000  # how long a SpatiaLite reader waits out a checkpoint or a recovery


def resolve_url(db: str | None = None, settings: Settings | None = None) -> str:
    """Turn ``--db`` (a URL or a file path), ``MUSECL_DATABASE_URL`` or the default into a URL.

    Args:
        db: a SQLAlchemy URL (``postgresql+psycopg://...``, ``sqlite:///...``) or a path to a
            SpatiaLite file; ``None`` falls back to the settings, then to ``./musecl.sqlite``.
        settings: runtime settings; read from the environment when omitted.
    """
    settings = settings or Settings.from_env()
    value = db or settings.database_url or DEFAULT_DB_FILE
    if "://" in value:
        url = make_url(value)
        if url.drivername == "postgresql":  # psycopg 3 is the one driver we ship
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _sqlite_dbapi() -> Any:
    """A sqlite3 module that can load extensions (pysqlite3 where the stdlib one cannot)."""
    try:
        import pysqlite3.dbapi2 as dbapi
    except ImportError:  # pragma: no cover - platforms whose stdlib sqlite3 loads extensions
        import sqlite3 as dbapi

    if not hasattr(dbapi.Connection, "enable_load_extension"):  # pragma: no cover
        raise SetupError(
            "this Python's sqlite3 cannot load SpatiaLite; `pip install pysqlite3-binary`"
        )
    return dbapi


def create_engine(url: str, settings: Settings | None = None, **kwargs: Any) -> Engine:
    """Create an engine for a PostGIS or SpatiaLite URL (see :func:`resolve_url`)."""
    settings = settings or Settings.from_env()
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 30)
        engine = sa.create_engine(parsed, pool_pre_ping=True, **kwargs)
        engine.update_execution_options(musecl_lock_timeout=settings.lock_timeout)
        return engine
    if backend != "sqlite":
        raise InputError(
            f"unsupported database URL {parsed.render_as_string()!r}: use postgresql+psycopg://"
            " for PostGIS or a file path / sqlite:/// URL for SpatiaLite"
        )
    if parsed.database in (None, "", ":memory:"):
        raise InputError("SpatiaLite needs a file path; in-memory databases are not supported")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # Connections load SpatiaLite when they open, which is slow: keep enough of them pooled
    # for a server's threads (opened on demand, so a CLI run still opens one).
    kwargs.setdefault("pool_size", 40)
    kwargs.setdefault("max_overflow", 0)
    kwargs.setdefault("pool_timeout", 120)
    engine = sa.create_engine(parsed, module=_sqlite_dbapi(), **kwargs)
    engine.update_execution_options(musecl_lock_timeout=settings.lock_timeout)
    library = settings.spatialite_library

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transactions (pysqlite's implicit ones skip DDL).
        dbapi_conn.isolation_level = None
        dbapi_conn.enable_load_extension(True)
        try:
            dbapi_conn.load_extension(library)
        except Exception as exc:
            raise SetupError(
                f"cannot load the SpatiaLite module {library!r} ({exc}); install it "
                "(Debian: apt-get install libsqlite3-mod-spatialite) or set "
                "SPATIALITE_LIBRARY_PATH"
            ) from exc
        finally:
            dbapi_conn.enable_load_extension(False)
        dbapi_conn.execute("PRAGMA foreign_keys = ON")
        dbapi_conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        dbapi_conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        if dbapi_conn.execute("SELECT CheckSpatialMetaData()").fetchone()[0] < 1:
            dbapi_conn.execute("SELECT InitSpatialMetaData(1)")
        dbapi_conn.create_function("musecl_cosine", 2, _blob_cosine, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if not options.get("musecl_write"):
            conn.exec_driver_sql("BEGIN")
            return
        # A writer takes the write lock when it begins (BEGIN IMMEDIATE), not at its first
        # write: a deferred transaction that read and then tries to write fails at once when
        # another writer committed meanwhile, whatever the busy timeout, and loses its work.
        raw = conn.connection.dbapi_connection
        assert raw is not None
        timeout = float(options.get("musecl_lock_timeout", 600.0))

        def begin_immediate(wait_ms: int) -> bool:
            """True when the write lock was taken within ``wait_ms``, False when busy."""
            raw.execute(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                raw.execute("BEGIN IMMEDIATE")
            except conn.dialect.dbapi.OperationalError as exc:  # type: ignore[union-attr]
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                return False
            return True

        try:
            if begin_immediate(200):
                return
            _say_waiting(timeout)
            started = time.monotonic()
            if not begin_immediate(int(timeout * 1000)):
                raise LockTimeoutError(_lock_message(timeout, time.monotonic() - started))
        finally:
            raw.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")

    return engine


def _say_waiting(timeout: float) -> None:
    sys.stderr.write(
        "musecl: another process is writing to the store; waiting for it to finish (up to "
        f"{timeout:g} s: --lock-timeout or MUSECL_LOCK_TIMEOUT)\n"
    )
    sys.stderr.flush()


def _lock_message(timeout: float, waited: float) -> str:
    return (
        f"another process kept the store's write lock for more than {timeout:g} s (waited "
        f"{waited:.0f} s); nothing was written. Try again when it has finished, or wait longer "
        "with --lock-timeout SECONDS (MUSECL_LOCK_TIMEOUT)"
    )


def _pg_write_lock(session: Session) -> None:
    """Take the store's write lock on PostgreSQL (a transaction-level advisory lock).

    Writers run one at a time, so revisions commit in the order they were numbered: a
    reader that has seen revision N has seen every write up to N (the FAISS cache's
    staleness check relies on it)."""
    conn = session.connection()
    standby, got = conn.exec_driver_sql(
        f"SELECT pg_is_in_recovery(), pg_try_advisory_xact_lock({WRITE_LOCK_KEY})"
    ).one()
    if standby:
        raise _read_only(session.get_bind())
    if got:
        return
    timeout = float(conn.get_execution_options().get("musecl_lock_timeout", 600.0))
    _say_waiting(timeout)
    started = time.monotonic()
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(timeout * 1000))}")
    try:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise LockTimeoutError(_lock_message(timeout, time.monotonic() - started)) from exc
    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")


def _blob_cosine(a: bytes | None, b: bytes | None) -> float | None:
    """musecl_cosine(vector, vector) for SpatiaLite: cosine of two float32 BLOB vectors."""
    if a is None or b is None or len(a) != len(b):
        return None
    x = np.frombuffer(a, dtype="<f4").astype(np.float64)
    y = np.frombuffer(b, dtype="<f4").astype(np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / norm if norm > 0 else None


def open_engine(db: str | None = None, settings: Settings | None = None) -> Engine:
    """Shortcut: :func:`resolve_url` then :func:`create_engine`."""
    settings = settings or Settings.from_env()
    return create_engine(resolve_url(db, settings), settings)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose work commits when the block succeeds and rolls back when it raises.

    ``write``: the block writes. It first takes the store's write lock (SpatiaLite: BEGIN
    IMMEDIATE; PostgreSQL: an advisory lock), waiting for another writer up to the lock
    timeout (``Settings.lock_timeout``) and saying on stderr that it waits; past the timeout
    it raises :class:`LockTimeoutError`. Readers never wait for writers.
    """
    try:
        with session_factory(engine)() as session, session.begin():
            if write:
                session.connection(execution_options={"musecl_write": True})
                if engine.dialect.name == "postgresql":
                    _pg_write_lock(session)
            yield session
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "25006":  # read_only_sql_transaction
            raise _read_only(engine) from exc
        raise


def _read_only(engine: Any) -> ReadOnlyDatabaseError:
    return ReadOnlyDatabaseError(
        f"{engine.url.render_as_string(hide_password=True)} only reads (a streaming replica "
        "in recovery): send writes to the primary (--db) and point reads at the replica "
        "(--read-db)"
    )


def missing_file(url: str) -> Path | None:
    """The SpatiaLite file a URL names when it does not exist (None for PostgreSQL, or a
    file that is there): a command that only reads must not create an empty store."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = Path(parsed.database or "")
    return None if path.is_file() else path
