"""One store's connections: its engines (the primary, and a streaming replica for reads
when there is one), schema checked on first use, and sessions in one transaction each."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from musecl_store.errors import StoreNotFoundError
from musecl_store.settings import Settings
from musecl_store.store import schema
from musecl_store.store.engine import create_engine, missing_file, resolve_url, transaction


class Connection:
    """The engines and sessions of one store (the facade :class:`musecl_store.api.Store`
    builds on it). A context manager that closes its connections."""

    def __init__(
        self,
        url: str,
        settings: Settings | None = None,
        *,
        create: bool = False,
        read_url: str | None = None,
    ):
        self.url = url
        self.settings = settings or Settings.from_env()
        self.create = create
        # reads (searches, features, exports ...) may go to a streaming replica of url
        read = read_url or self.settings.read_database_url
        self.read_url = resolve_url(read, self.settings) if read else None
        self._engine: Engine | None = None
        self._read_engine: Engine | None = None
        self._engine_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown_url!r})"

    def close(self) -> None:
        """Release the database connections (the store stays usable: it reopens on use)."""
        with self._engine_lock:
            for engine in (self._engine, self._read_engine):
                if engine is not None:
                    engine.dispose()
            self._engine = self._read_engine = None

    @property
    def shown_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def index_dir(self) -> Path:
        return Path(self.settings.index_dir)

    def engine(self, *, create: bool = False) -> Engine:
        """The SQLAlchemy engine, schema checked; ``create`` (or ``open(create=True)``) makes
        a missing SpatiaLite file and an empty database's schema.

        Raises:
            StoreNotFoundError: a SpatiaLite file that does not exist, opened to read.
            SchemaError: a database at another schema revision (run ``musecl db init``).
        """
        with self._engine_lock:
            if self._engine is None:
                if not (create or self.create):
                    self._must_exist()
                engine = schema.checked_engine(
                    self.url, self.settings, create=create or self.create
                )
                self._engine = engine
            return self._engine

    def _must_exist(self) -> None:
        path = missing_file(self.url)
        if path is not None:
            raise StoreNotFoundError(
                f"no store at {path} (the file does not exist); check --db, or create "
                "one with `musecl ingest BUNDLE` or `musecl db init`"
            )

    def _initialised(self) -> bool:
        """Whether the store exists and has its schema (looked at without creating either)."""
        if missing_file(self.url) is not None:
            return False
        engine = create_engine(self.url, self.settings)
        try:
            return schema.has_schema(engine)
        finally:
            engine.dispose()

    def read_engine(self) -> Engine:
        """The engine reads go to: the replica (``read_url``) when there is one."""
        if self.read_url is None:
            return self.engine()
        with self._engine_lock:
            if self._read_engine is None:
                engine = schema.checked_engine(self.read_url, self.settings)
                self._read_engine = engine
            return self._read_engine

    @contextmanager
    def session(
        self, *, create: bool = False, write: bool = False, primary: bool = False
    ) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds.

        ``write``: the block writes; it waits for the store's write lock first (see
        :func:`musecl_store.store.engine.transaction`). Other sessions read from the replica
        when the store has one, unless ``primary`` (a read that must see this process's own
        writes)."""
        reads_only = not (write or create or primary)
        engine = self.read_engine() if reads_only else self.engine(create=create)
        with transaction(engine, write=write) as s:
            yield s

    # ------------------------------------------------------------------ schema

    def init(self) -> dict[str, Any]:
        """Create or upgrade the schema to the newest migration (safe to run again)."""
        engine = create_engine(self.url, self.settings)
        try:
            before = schema.current_revision(engine)
            schema.upgrade(engine)
            after = schema.current_revision(engine)
        finally:
            engine.dispose()
        return {
            "database": self.shown_url,
            "dialect": engine.dialect.name,
            "from": before,
            "to": after,
        }

    def status(self) -> dict[str, Any]:
        """The database, its schema revision and the revision this code expects."""
        if not self.create:
            self._must_exist()
        engine = self._engine or create_engine(self.url, self.settings)
        try:
            current, head = schema.current_revision(engine), schema.head_revision()
        finally:
            if engine is not self._engine:
                engine.dispose()
        return {
            "database": self.shown_url,
            "dialect": engine.dialect.name,
            "current": current,
            "head": head,
            "up_to_date": current == head,
        }
