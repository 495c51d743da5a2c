"""SQL views for joins (region_embeddings, region_predictions) and musecl_cosine() on PostgreSQL.

On SpatiaLite, musecl_cosine() is registered on every connection musecl opens (a Python
function over the float32 BLOBs), so the same SQL runs on both backends.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

REGION_EMBEDDINGS = """
CREATE VIEW region_embeddings AS
SELECT r.id AS region_pk, c.name AS city, r.region_id, r.geom, r.centroid,
       e.model_version_id, e.kind, e.dim, e.vector, e.attention, e.imputed,
       e.revision AS embedding_revision
FROM embeddings e
JOIN regions r ON r.id = e.region_pk
JOIN cities c ON c.id = r.city_id
"""

REGION_PREDICTIONS = """
CREATE VIEW region_predictions AS
SELECT r.id AS region_pk, c.name AS city, r.region_id, r.geom, r.centroid,
       p.indicator, p.value, p.regressor, p.model_version_id, p.metrics,
       p.revision AS prediction_revision
FROM predictions p
JOIN regions r ON r.id = p.region_pk
JOIN cities c ON c.id = r.city_id
"""

PG_COSINE = """
CREATE OR REPLACE FUNCTION musecl_cosine(a real[], b real[]) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT sum(x * y) / nullif(sqrt(sum(x * x)) * sqrt(sum(y * y)), 0)
  FROM unnest(a, b) AS t(x, y)
$$
"""


def upgrade() -> None:
    op.execute(REGION_EMBEDDINGS)
    op.execute(REGION_PREDICTIONS)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_COSINE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS musecl_cosine(real[], real[])")
    op.execute("DROP VIEW IF EXISTS region_predictions")
    op.execute("DROP VIEW IF EXISTS region_embeddings")
