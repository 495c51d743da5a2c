"""Initial schema: cities, regions, POIs, images, mobility, indicators, census layers,
model versions, embeddings, predictions, revisions and the change log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

from musecl_store.store.types import Vector

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Needs a superuser (or a DBA who ran it once); downgrade leaves the extension alone.
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.create_table(
        "cities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("crs", sa.String(length=64), nullable=False),
        sa.Column("h3_resolution", sa.Integer(), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cities")),
        sa.UniqueConstraint("name", name=op.f("uq_cities_name")),
    )
    op.create_table(
        "census_layers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"],
            ["cities.id"],
            name=op.f("fk_census_layers_city_id_cities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_census_layers")),
        sa.UniqueConstraint("city_id", "name", name=op.f("uq_census_layers_city_id_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("data_revision", sa.Integer(), nullable=False),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"],
            ["cities.id"],
            name=op.f("fk_model_versions_city_id_cities"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_city_id"), ["city_id"], unique=False)

    op.create_geospatial_table(
        "regions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=False),
        sa.Column("region_id", sa.String(length=100), nullable=False),
        sa.Column(
            "geom",
            Geometry(
                geometry_type="MULTIPOLYGON",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column(
            "centroid",
            Geometry(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column("h3_cell", sa.String(length=16), nullable=True),
        sa.Column("area_km2", sa.Float(), nullable=False),
        sa.Column("hash_geometry", sa.String(length=32), nullable=False),
        sa.Column("hash_poi", sa.String(length=32), nullable=False),
        sa.Column("hash_remote", sa.String(length=32), nullable=False),
        sa.Column("hash_street", sa.String(length=32), nullable=False),
        sa.Column("hash_mobility", sa.String(length=32), nullable=False),
        sa.Column("hash_indicators", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"], ["cities.id"], name=op.f("fk_regions_city_id_cities"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regions")),
        sa.UniqueConstraint("city_id", "region_id", name=op.f("uq_regions_city_id_region_id")),
    )
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.create_geospatial_index(
            "idx_regions_centroid",
            ["centroid"],
            unique=False,
            postgresql_using="gist",
            postgresql_ops={},
        )
        batch_op.create_geospatial_index(
            "idx_regions_geom", ["geom"], unique=False, postgresql_using="gist", postgresql_ops={}
        )
        batch_op.create_index(batch_op.f("ix_regions_city_id"), ["city_id"], unique=False)

    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=True),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"],
            ["cities.id"],
            name=op.f("fk_revisions_city_id_cities"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revisions")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_revisions_city_id"), ["city_id"], unique=False)

    op.create_geospatial_table(
        "census_features",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("layer_id", sa.Integer(), nullable=False),
        sa.Column("feature_no", sa.Integer(), nullable=False),
        sa.Column(
            "geom",
            Geometry(
                geometry_type="MULTIPOLYGON",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["layer_id"],
            ["census_layers.id"],
            name=op.f("fk_census_features_layer_id_census_layers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_census_features")),
    )
    with op.batch_alter_table("census_features", schema=None) as batch_op:
        batch_op.create_geospatial_index(
            "idx_census_features_geom",
            ["geom"],
            unique=False,
            postgresql_using="gist",
            postgresql_ops={},
        )
        batch_op.create_index(batch_op.f("ix_census_features_layer_id"), ["layer_id"], unique=False)

    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", Vector(), nullable=False),
        sa.Column("attention", sa.JSON(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('remote', 'street', 'poi', 'fused')", name=op.f("ck_embeddings_kind")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_embeddings_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_embeddings_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint(
            "region_pk",
            "model_version_id",
            "kind",
            name=op.f("uq_embeddings_region_pk_model_version_id_kind"),
        ),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_embeddings_model_version_id_kind"),
            ["model_version_id", "kind"],
            unique=False,
        )

    op.create_geospatial_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=False),
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "geom",
            Geometry(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column("heading", sa.Float(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.CheckConstraint("kind IN ('remote', 'street')", name=op.f("ck_images_kind")),
        sa.ForeignKeyConstraint(
            ["city_id"], ["cities.id"], name=op.f("fk_images_city_id_cities"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_images_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("city_id", "path", name=op.f("uq_images_city_id_path")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_geospatial_index(
            "idx_images_geom", ["geom"], unique=False, postgresql_using="gist", postgresql_ops={}
        )
        batch_op.create_index(
            batch_op.f("ix_images_region_pk_kind"), ["region_pk", "kind"], unique=False
        )

    op.create_table(
        "indicators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_indicators_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_indicators")),
        sa.UniqueConstraint(
            "region_pk", "name", "source", name=op.f("uq_indicators_region_pk_name_source")
        ),
    )
    with op.batch_alter_table("indicators", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_indicators_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_indicators_region_pk"), ["region_pk"], unique=False)

    op.create_table(
        "mobility",
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("inflow", sa.Integer(), nullable=False),
        sa.Column("outflow", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_mobility_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("region_pk", name=op.f("pk_mobility")),
    )
    op.create_table(
        "od_flows",
        sa.Column("origin_pk", sa.Integer(), nullable=False),
        sa.Column("dest_pk", sa.Integer(), nullable=False),
        sa.Column("trips", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dest_pk"],
            ["regions.id"],
            name=op.f("fk_od_flows_dest_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["origin_pk"],
            ["regions.id"],
            name=op.f("fk_od_flows_origin_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("origin_pk", "dest_pk", name=op.f("pk_od_flows")),
    )
    with op.batch_alter_table("od_flows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_od_flows_dest_pk"), ["dest_pk"], unique=False)

    op.create_geospatial_table(
        "pois",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=False),
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("poi_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "geom",
            Geometry(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"], ["cities.id"], name=op.f("fk_pois_city_id_cities"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_pois_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pois")),
        sa.UniqueConstraint("city_id", "poi_id", name=op.f("uq_pois_city_id_poi_id")),
    )
    with op.batch_alter_table("pois", schema=None) as batch_op:
        batch_op.create_geospatial_index(
            "idx_pois_geom", ["geom"], unique=False, postgresql_using="gist", postgresql_ops={}
        )
        batch_op.create_index(batch_op.f("ix_pois_region_pk"), ["region_pk"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("region_pk", sa.Integer(), nullable=False),
        sa.Column("indicator", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("regressor", sa.String(length=200), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_predictions_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["region_pk"],
            ["regions.id"],
            name=op.f("fk_predictions_region_pk_regions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "region_pk",
            "indicator",
            "regressor",
            name=op.f("uq_predictions_region_pk_indicator_regressor"),
        ),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_indicator"), ["indicator"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_predictions_model_version_id"), ["model_version_id"], unique=False
        )

    op.create_table(
        "region_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=False),
        sa.Column("region_id", sa.String(length=100), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("modalities", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "change IN ('added', 'updated', 'removed')", name=op.f("ck_region_changes_change")
        ),
        sa.ForeignKeyConstraint(
            ["city_id"],
            ["cities.id"],
            name=op.f("fk_region_changes_city_id_cities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["revisions.id"],
            name=op.f("fk_region_changes_revision_id_revisions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_region_changes")),
    )
    with op.batch_alter_table("region_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_region_changes_city_id_revision_id"),
            ["city_id", "revision_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("region_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_region_changes_city_id_revision_id"))

    op.drop_table("region_changes")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_model_version_id"))
        batch_op.drop_index(batch_op.f("ix_predictions_indicator"))

    op.drop_table("predictions")
    with op.batch_alter_table("pois", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pois_region_pk"))
        batch_op.drop_geospatial_index("idx_pois_geom", postgresql_using="gist", column_name="geom")

    op.drop_geospatial_table("pois")
    with op.batch_alter_table("od_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_od_flows_dest_pk"))

    op.drop_table("od_flows")
    op.drop_table("mobility")
    with op.batch_alter_table("indicators", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_indicators_region_pk"))
        batch_op.drop_index(batch_op.f("ix_indicators_name"))

    op.drop_table("indicators")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_region_pk_kind"))
        batch_op.drop_geospatial_index(
            "idx_images_geom", postgresql_using="gist", column_name="geom"
        )

    op.drop_geospatial_table("images")
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_embeddings_model_version_id_kind"))

    op.drop_table("embeddings")
    with op.batch_alter_table("census_features", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_census_features_layer_id"))
        batch_op.drop_geospatial_index(
            "idx_census_features_geom", postgresql_using="gist", column_name="geom"
        )

    op.drop_geospatial_table("census_features")
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_revisions_city_id"))

    op.drop_table("revisions")
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_regions_city_id"))
        batch_op.drop_geospatial_index(
            "idx_regions_geom", postgresql_using="gist", column_name="geom"
        )
        batch_op.drop_geospatial_index(
            "idx_regions_centroid", postgresql_using="gist", column_name="centroid"
        )

    op.drop_geospatial_table("regions")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_city_id"))

    op.drop_table("model_versions")
    op.drop_table("census_layers")
    op.drop_table("cities")
