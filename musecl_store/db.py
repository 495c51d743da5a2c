"""Opening the store: a URL or file path becomes an engine for PostGIS or SpatiaLite.

Everything dialect-specific about *connecting* lives here; SQL-level differences live in
:mod:`musecl_store.dialect`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# pyproj bundles its own PROJ; mod_spatialite links the system's. When SpatiaLite is loaded
# first, the two PROJ copies' static destructors collide at exit (heap corruption). Loading
# pyproj before any SpatiaLite connection avoids it, so this import must stay here.
import numpy as np
import pyproj  # noqa: F401
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from musecl_store.settings import DEFAULT_DB_FILE, Settings


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
        raise RuntimeError(
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
        return sa.create_engine(parsed, pool_pre_ping=True, **kwargs)
    if backend != "sqlite":
        raise ValueError(
            f"unsupported database URL {parsed.render_as_string()!r}: use postgresql+psycopg://"
            " for PostGIS or a file path / sqlite:/// URL for SpatiaLite"
        )
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("SpatiaLite needs a file path; in-memory databases are not supported")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # Connections load SpatiaLite when they open, which is slow: keep enough of them pooled
    # for a server's threads (opened on demand, so a CLI run still opens one).
    kwargs.setdefault("pool_size", 40)
    kwargs.setdefault("max_overflow", 0)
    kwargs.setdefault("pool_timeout", 120)
    engine = sa.create_engine(parsed, module=_sqlite_dbapi(), **kwargs)
    library = settings.spatialite_library

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transactions (pysqlite's implicit ones skip DDL).
        dbapi_conn.isolation_level = None
        dbapi_conn.enable_load_extension(True)
        try:
            dbapi_conn.load_extension(library)
        except Exception as exc:
            raise RuntimeError(
                f"cannot load the SpatiaLite module {library!r} ({exc}); install it "
                "(Debian: apt-get install libsqlite3-mod-spatialite) or set "
                "SPATIALITE_LIBRARY_PATH"
            ) from exc
        finally:
            dbapi_conn.enable_load_extension(False)
        dbapi_conn.execute("PRAGMA foreign_keys = ON")
        dbapi_conn.execute("PRAGMA busy_timeout = 60000")
        dbapi_conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        if dbapi_conn.execute("SELECT CheckSpatialMetaData()").fetchone()[0] < 1:
            dbapi_conn.execute("SELECT InitSpatialMetaData(1)")
        dbapi_conn.create_function("musecl_cosine", 2, _blob_cosine, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


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
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits when the block succeeds and rolls back when it raises."""
    with session_factory(engine)() as session, session.begin():
        yield session
