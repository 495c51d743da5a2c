"""Schema management: Alembic migrations run from Python (``musecl db init``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError

from musecl_store.errors import SchemaError, SetupError
from musecl_store.settings import Settings
from musecl_store.store.engine import create_engine

_PACKAGE = Path(__file__).resolve().parent.parent  # musecl_store/


def migrations_dir() -> Path:
    """The Alembic script directory: ``migrations/`` in a checkout, packaged in a wheel."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(f"cannot find the migrations directory near {_PACKAGE}")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory(str(migrations_dir())).get_heads()
    if len(heads) != 1:  # pragma: no cover - a broken migration history
        raise SchemaError(f"migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)


def has_schema(engine: Engine) -> bool:
    """Whether the database has musecl's tables (at any migration)."""
    return current_revision(engine) is not None or "cities" in inspect(engine).get_table_names()


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Make sure the database is at the head migration.

    A database with none of our tables is migrated when ``create`` is true (a fresh
    SpatiaLite file just works); one at an older migration is refused with the fix.

    Raises:
        SchemaError: the schema is missing (and ``create`` is false) or out of date.
    """
    current = current_revision(engine)
    if current == head_revision():
        return
    url = engine.url.render_as_string(hide_password=True)
    if current is None:
        if "cities" in inspect(engine).get_table_names():
            raise SchemaError(
                f"{url} has musecl tables but no migration stamp; run `musecl db init`"
            )
        if not create:
            raise SchemaError(f"{url} is not initialised; run `musecl db init`")
        upgrade(engine)
        return
    raise SchemaError(
        f"{url} is at schema revision {current}, this code needs {head_revision()}; "
        "run `musecl db init` to upgrade it"
    )


def checked_engine(url: str, settings: Settings, *, create: bool = False) -> Engine:
    """An engine on ``url`` whose schema is at the head migration (``create``: migrate a
    database with none of our tables).

    Raises:
        SetupError: a SpatiaLite path to a file that is not a database.
        SchemaError: as :func:`ensure_schema`.
    """
    engine = create_engine(url, settings)
    try:
        ensure_schema(engine, create=create)
    except DatabaseError as exc:
        engine.dispose()
        if "not a database" in str(exc.orig):  # a SpatiaLite path to another file
            raise SetupError(
                f"{make_url(url).database} is not a musecl store (SQLite: {exc.orig}); "
                "check --db"
            ) from exc
        raise
    except BaseException:
        engine.dispose()
        raise
    return engine
