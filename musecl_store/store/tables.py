"""The store's tables (SQLAlchemy 2 ORM + GeoAlchemy2), one definition for PostGIS and SpatiaLite.

All geometries are SRID 4326 (lon/lat). Region polygons are stored as MULTIPOLYGON so every
row has one geometry type; centroids and points are POINT. Every geometry column has a
spatial index (GiST on PostGIS, an R*Tree on SpatiaLite).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from musecl_store.store.types import Vector

MODALITIES = ("geometry", "poi", "remote", "street", "mobility", "indicators")
"""What a region's content hashes cover; the change log names the modalities that changed."""

IMAGE_KINDS = ("remote", "street")
EMBEDDING_KINDS = ("fused", "remote", "street", "poi")  # the one list; the default first

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class City(Base):
    """One city; ``name`` is unique per store. ``source_path`` is the bundle's absolute path."""

    __tablename__ = "cities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    crs: Mapped[str] = mapped_column(String(64))
    h3_resolution: Mapped[int | None] = mapped_column(Integer)
    source_path: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    revision: Mapped[int] = mapped_column(Integer, doc="last store revision that touched it")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Revision(Base):
    """A store revision: one committed write (ingest, train, reembed, predict)."""

    __tablename__ = "revisions"
    __table_args__ = {"sqlite_autoincrement": True}  # revision numbers are never reused

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int | None] = mapped_column(
        ForeignKey("cities.id", ondelete="SET NULL"), index=True
    )
    operation: Mapped[str] = mapped_column(String(32))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Region(Base):
    """A region with its geometry and one content hash per modality (see ``MODALITIES``)."""

    __tablename__ = "regions"
    __table_args__ = (UniqueConstraint("city_id", "region_id"), Index(None, "city_id", "h3_cell"))

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id", ondelete="CASCADE"), index=True)
    region_id: Mapped[str] = mapped_column(String(100))
    geom: Mapped[Any] = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=True))
    centroid: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326, spatial_index=True))
    h3_cell: Mapped[str | None] = mapped_column(String(16))
    area_km2: Mapped[float] = mapped_column(Float)
    hash_geometry: Mapped[str] = mapped_column(String(32))
    hash_poi: Mapped[str] = mapped_column(String(32))
    hash_remote: Mapped[str] = mapped_column(String(32))
    hash_street: Mapped[str] = mapped_column(String(32))
    hash_mobility: Mapped[str] = mapped_column(String(32))
    hash_indicators: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer, doc="store revision of its last change")


class Poi(Base):
    """A point of interest, assigned to the region that contains it."""

    __tablename__ = "pois"
    __table_args__ = (UniqueConstraint("city_id", "poi_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id", ondelete="CASCADE"))
    region_pk: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    poi_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")
    geom: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326, spatial_index=True))
    content_hash: Mapped[str] = mapped_column(String(32))


class Image(Base):
    """A remote-sensing tile or street-level photo.

    The file is read from ``cities.source_path / path``; ``sha256`` and ``size_bytes`` let
    training and re-embedding refuse a file that moved or changed since the ingest.
    """

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("city_id", "path"),
        CheckConstraint(_in("kind", IMAGE_KINDS), name="kind"),
        Index(None, "region_pk", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id", ondelete="CASCADE"))
    region_pk: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text, doc="relative to the bundle, '/'-separated")
    geom: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326, spatial_index=True))
    heading: Mapped[float | None] = mapped_column(Float)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(32))


class Mobility(Base):
    """Trip counts per region: trips that start in it (outflow) and end in it (inflow)."""

    __tablename__ = "mobility"

    region_pk: Mapped[int] = mapped_column(
        ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True
    )
    inflow: Mapped[int] = mapped_column(Integer)
    outflow: Mapped[int] = mapped_column(Integer)


class OdFlow(Base):
    """The origin-destination matrix, sparse: one row per pair with at least one trip."""

    __tablename__ = "od_flows"

    origin_pk: Mapped[int] = mapped_column(
        ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True
    )
    dest_pk: Mapped[int] = mapped_column(
        ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    trips: Mapped[int] = mapped_column(Integer)


class Indicator(Base):
    """A socioeconomic value in long form: (region, name, source) -> value."""

    __tablename__ = "indicators"
    __table_args__ = (UniqueConstraint("region_pk", "name", "source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    region_pk: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(200), default="indicators.csv")


class CensusLayer(Base):
    """A polygon layer from ``census/<name>.geojson``; ``fields`` are its numeric properties."""

    __tablename__ = "census_layers"
    __table_args__ = (UniqueConstraint("city_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    fields: Mapped[list[Any]] = mapped_column(default=list)
    content_hash: Mapped[str] = mapped_column(String(32))


class CensusFeature(Base):
    __tablename__ = "census_features"

    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(
        ForeignKey("census_layers.id", ondelete="CASCADE"), index=True
    )
    feature_no: Mapped[int] = mapped_column(Integer, doc="1-based position in the file")
    geom: Mapped[Any] = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=True))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ModelVersion(Base):
    """A trained model: its full config, seed, data revision, library versions and metrics."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int | None] = mapped_column(
        ForeignKey("cities.id", ondelete="SET NULL"), index=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(Integer)
    data_revision: Mapped[int] = mapped_column(Integer)
    library_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Embedding(Base):
    """One vector per (region, model version, kind); fused rows carry the attention weights."""

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("region_pk", "model_version_id", "kind"),
        CheckConstraint(_in("kind", EMBEDDING_KINDS), name="kind"),
        Index(None, "model_version_id", "kind", "revision"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    region_pk: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(8))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[np.ndarray] = mapped_column(Vector())
    attention: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    imputed: Mapped[bool] = mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        doc="the region lacks this modality; the vector is the modality's mean",
    )
    revision: Mapped[int] = mapped_column(Integer)


class TextEmbedding(Base):
    """Cache of POI text embeddings by text encoder and content hash (re-runs skip them)."""

    __tablename__ = "text_embeddings"

    encoder: Mapped[str] = mapped_column(String(200), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    vector: Mapped[np.ndarray] = mapped_column(Vector())


class Regressor(Base):
    """A fitted indicator regressor: what it reads (model version, kind), its cross-validated
    metrics and its parameters (an ``.npz`` blob: no pickle)."""

    __tablename__ = "regressors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    city_id: Mapped[int | None] = mapped_column(ForeignKey("cities.id", ondelete="SET NULL"))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))
    indicator: Mapped[str] = mapped_column(String(200))
    head: Mapped[str] = mapped_column(String(16))
    log_target: Mapped[bool] = mapped_column(Boolean)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """A predicted indicator value, with the regressor, its metrics and the model version."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("region_pk", "indicator", "regressor"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    region_pk: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"))
    indicator: Mapped[str] = mapped_column(String(200), index=True)
    value: Mapped[float] = mapped_column(Float)
    regressor: Mapped[str] = mapped_column(String(200))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), index=True
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RegionChange(Base):
    """The change log: which regions changed (and in which modalities) at which revision."""

    __tablename__ = "region_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id", ondelete="CASCADE"))
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id", ondelete="CASCADE"))
    region_id: Mapped[str] = mapped_column(String(100))
    change: Mapped[str] = mapped_column(String(8))
    modalities: Mapped[list[Any]] = mapped_column(default=list)

    __table_args__ = (
        Index(None, "city_id", "revision_id"),
        CheckConstraint(_in("change", ("added", "updated", "removed")), name="change"),
    )
