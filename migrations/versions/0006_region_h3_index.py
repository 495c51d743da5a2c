"""Regions: index (city_id, h3_cell), so that a point is found by its H3 cell without
reading the city's geometries (``musecl features --points`` at country scale).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_regions_city_id_h3_cell", "regions", ["city_id", "h3_cell"])


def downgrade() -> None:
    op.drop_index("ix_regions_city_id_h3_cell", table_name="regions")
