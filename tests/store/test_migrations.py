"""Alembic migrations: up, down and up again on both backends; models and migrations agree."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from musecl_store.errors import SchemaError
from musecl_store.store import schema
from musecl_store.store.engine import create_engine
from musecl_store.store.tables import Base

OURS = set(Base.metadata.tables)


def our_tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    return {t for t in inspect(engine).get_table_names() if t in OURS}


def spatial_indexes(engine) -> set[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        if engine.dialect.name == "postgresql":
            rows = c.execute(
                text(
                    "SELECT tablename || '.' || indexname FROM pg_indexes "
                    "WHERE indexdef ILIKE '%USING gist%'"
                )
            )
        else:
            rows = c.execute(
                text(
                    "SELECT f_table_name || '.idx_' || f_table_name || '_' || "
                    "f_geometry_column FROM geometry_columns "
                    "WHERE spatial_index_enabled = 1"
                )
            )
        return set(rows.scalars())


def test_upgrade_downgrade_upgrade(backend) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(backend.new_url(migrated=False))
    assert our_tables(engine) == set()
    schema.upgrade(engine)
    assert our_tables(engine) == OURS
    assert schema.current_revision(engine) == schema.head_revision()
    expected = {
        "regions.idx_regions_geom",
        "regions.idx_regions_centroid",
        "pois.idx_pois_geom",
        "images.idx_images_geom",
        "census_features.idx_census_features_geom",
    }
    assert spatial_indexes(engine) == expected

    schema.downgrade(engine)
    assert our_tables(engine) == set()
    assert schema.current_revision(engine) is None
    assert spatial_indexes(engine) == set()
    if engine.dialect.name == "sqlite":  # no R*Tree tables or geometry registrations left over
        names = inspect(engine).get_table_names()
        assert not [n for n in names if n.startswith("idx_")]
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM geometry_columns")).scalar() == 0

    schema.upgrade(engine)
    assert our_tables(engine) == OURS
    engine.dispose()


def test_models_match_migrations(engine) -> None:  # type: ignore[no-untyped-def]
    def include(obj, name, kind, reflected, compare_to):  # type: ignore[no-untyped-def]
        return not (kind == "table" and reflected and name not in OURS)

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include}
        )
        assert compare_metadata(ctx, Base.metadata) == []


def test_geometry_columns_have_type_and_srid(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        if engine.dialect.name == "postgresql":
            rows = c.execute(
                text(
                    "SELECT f_table_name, f_geometry_column, type, srid "
                    "FROM geometry_columns WHERE f_table_name = 'regions'"
                )
            )
            got = {(t, col, typ.upper(), srid) for t, col, typ, srid in rows}
        else:
            rows = c.execute(
                text(
                    "SELECT f_table_name, f_geometry_column, geometry_type, srid "
                    "FROM geometry_columns WHERE f_table_name = 'regions'"
                )
            )
            names = {3: "POLYGON", 6: "MULTIPOLYGON", 1: "POINT"}
            got = {(t, col, names[typ], srid) for t, col, typ, srid in rows}
    assert got == {
        ("regions", "geom", "MULTIPOLYGON", 4326),
        ("regions", "centroid", "POINT", 4326),
    }


def test_ensure_schema_creates_a_fresh_store_and_refuses_an_unstamped_one(backend) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(backend.new_url(migrated=False))
    with pytest.raises(SchemaError, match="not initialised; run `musecl db init`"):
        schema.ensure_schema(engine, create=False)
    schema.ensure_schema(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    with engine.begin() as c:
        c.execute(text("DELETE FROM alembic_version"))
    with pytest.raises(SchemaError, match="no migration stamp"):
        schema.ensure_schema(engine)
    with engine.begin() as c:
        c.execute(text("INSERT INTO alembic_version VALUES ('0000old')"))
    with pytest.raises(SchemaError, match=r"schema revision 0000old.*musecl db init"):
        schema.ensure_schema(engine)
    engine.dispose()
