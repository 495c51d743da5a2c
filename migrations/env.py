"""Alembic environment: one migration history for PostGIS and SpatiaLite."""

from __future__ import annotations

from alembic import context
from geoalchemy2 import alembic_helpers

from musecl_store.store.engine import open_engine
from musecl_store.store.tables import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, obj_type, reflected, compare_to):  # type: ignore[no-untyped-def]
    """Compare only our tables: SpatiaLite and PostGIS keep their own in the same schema."""
    if obj_type == "table" and reflected and name not in target_metadata.tables:
        return False
    return alembic_helpers.include_object(obj, name, obj_type, reflected, compare_to)


def _engine():  # type: ignore[no-untyped-def]
    engine = config.attributes.get("engine")
    if engine is None:  # `alembic` run by hand
        engine = open_engine(context.get_x_argument(as_dictionary=True).get("db"))
    return engine


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            include_object=include_object,
            process_revision_directives=alembic_helpers.writer,
            render_item=alembic_helpers.render_item,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
