"""Test fixtures: every database test runs on SpatiaLite (a temp file) and on PostGIS.

``MUSECL_TEST_BACKENDS`` picks the backends (default ``spatialite,postgis``);
``MUSECL_TEST_PG_URL`` is an admin connection to a PostgreSQL server with PostGIS available
(default ``postgresql+psycopg://root@127.0.0.1:5432/test``). Each test gets its own database,
cloned from a template that was migrated once, so tests cannot see each other's data. A
PostgreSQL that cannot be reached fails the run: it is never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from musecl_store.store import schema
from musecl_store.store.engine import create_engine
from musecl_store.store.tables import Base

os.environ.setdefault("MUSECL_PROGRESS", "0")

# The fuzz modules' shared fixtures live with their strategies in tests/fuzzing.py; loaded as a
# plugin, they reach every test folder and their asserts are rewritten like a test module's.
pytest_plugins = ["tests.fuzzing"]

BACKENDS = [
    b.strip()
    for b in os.environ.get("MUSECL_TEST_BACKENDS", "spatialite,postgis").split(",")
    if b.strip()
]
PG_ADMIN_URL = os.environ.get("MUSECL_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
BUNDLES = Path(__file__).parent / "bundles"
TAG = uuid.uuid4().hex[:8]


@dataclass
class Backend:
    """Makes throw-away databases of one kind."""

    name: str
    workdir: Path
    _made: list[str] = field(default_factory=list)
    _admin: Engine | None = None
    _templates: dict[bool, str] = field(default_factory=dict)

    @property
    def admin(self) -> Engine:
        if self._admin is None:
            self._admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with self._admin.connect() as c:
                    c.exec_driver_sql("SELECT 1")
            except Exception as exc:  # pragma: no cover - environment problem
                pytest.fail(
                    f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc}); start it or "
                    "set MUSECL_TEST_BACKENDS=spatialite",
                    pytrace=False,
                )
        return self._admin

    def _pg_url(self, db: str) -> str:
        return make_url(PG_ADMIN_URL).set(database=db).render_as_string(hide_password=False)

    def _template(self, migrated: bool) -> str:
        """A database (or file) to copy: empty, or migrated to head."""
        if migrated not in self._templates:
            if self.name == "postgis":
                db = f"musecl_tpl_{TAG}_{int(migrated)}"
                with self.admin.connect() as c:
                    c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}"')
                    c.exec_driver_sql(f'CREATE DATABASE "{db}"')
                self._made.append(db)
                engine = sa.create_engine(self._pg_url(db))
                with engine.begin() as c:
                    c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS postgis")
                if migrated:
                    schema.upgrade(engine)
                engine.dispose()
                self._templates[migrated] = db
            else:
                path = self.workdir / f"template_{int(migrated)}.sqlite"
                engine = create_engine(f"sqlite:///{path}")
                with engine.connect():
                    pass  # initialises the SpatiaLite metadata
                if migrated:
                    schema.upgrade(engine)
                engine.dispose()
                self._templates[migrated] = str(path)
        return self._templates[migrated]

    def new_url(self, *, migrated: bool = True) -> str:
        """A fresh database: a copy of the template, so each test starts from the same state."""
        template = self._template(migrated)
        n = len(self._made)
        if self.name == "postgis":
            db = f"musecl_t_{TAG}_{n}"
            with self.admin.connect() as c:
                c.exec_driver_sql(f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
            self._made.append(db)
            return self._pg_url(db)
        path = self.workdir / f"db_{n}.sqlite"
        shutil.copyfile(template, path)
        self._made.append(str(path))
        return f"sqlite:///{path}"

    def clone(self, url: str) -> str:
        """A copy of a database (nobody may be connected to it while it is copied)."""
        n = len(self._made)
        if self.name == "postgis":
            source = make_url(url).database
            db = f"musecl_c_{TAG}_{n}"
            with self.admin.connect() as c:
                c.exec_driver_sql(f'CREATE DATABASE "{db}" TEMPLATE "{source}"')
            self._made.append(db)
            return self._pg_url(db)
        path = self.workdir / f"clone_{n}.sqlite"
        # The online backup API copies committed pages still in the WAL file too.
        import pysqlite3.dbapi2 as sqlite

        src, dst = sqlite.connect(make_url(url).database or ""), sqlite.connect(str(path))
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        self._made.append(str(path))
        return f"sqlite:///{path}"

    def close(self) -> None:
        if self.name == "postgis" and self._admin is not None:
            with self._admin.connect() as c:
                for db in reversed(self._made):
                    c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            self._admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path_factory.mktemp(request.param))
    yield b
    b.close()


@pytest.fixture
def db_url(backend: Backend) -> str:
    """URL of a fresh database migrated to head."""
    return backend.new_url()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = create_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    return BUNDLES / "tiny"


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated city (seed 3, ~60 regions), shared read-only by the session."""
    from musecl_store.demo import make_demo_city

    out = tmp_path_factory.mktemp("demo") / "city"
    make_demo_city(out, seed=3, regions=60, show_progress=False)
    return out


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every store table, comparable across calls (geometries as WKT)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            cols = []
            for col in table.columns:
                if col.type.__class__.__name__ == "Geometry":
                    cols.append(sa.func.ST_AsText(col).label(col.name))
                else:
                    cols.append(col)
            rows = conn.execute(sa.select(*cols).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(_plain(v) for v in r) for r in rows]
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "tobytes"):
        return v.tobytes()
    return v


FAST_TRAINING = {"epochs": 1, "fusion_epochs": 4, "image_size": 32, "batch_size": 16, "top_k": 5}


@pytest.fixture(scope="session")
def trained(backend: Backend, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding the ~60-region demo city, trained once per backend (model version
    1). Tests read it; a test that writes works on ``backend.clone(trained)``."""
    from musecl_store.ingest.apply import ingest_bundle
    from musecl_store.store.engine import transaction
    from training.config import TrainConfig
    from training.trainer import train_city

    url = backend.new_url()
    engine = create_engine(url)
    with transaction(engine) as s:
        ingest_bundle(s, demo_bundle)
    ckpt = tmp_path_factory.mktemp("ckpt")
    train_city(
        engine,
        "demo-3",
        TrainConfig.from_dict({**FAST_TRAINING, "checkpoint_dir": str(ckpt)}),
        log=lambda m: None,
    )
    engine.dispose()
    return url
