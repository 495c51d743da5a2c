"""Fitted indicator regressors (musecl regress fit/predict).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regressors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("city_id", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("indicator", sa.String(length=200), nullable=False),
        sa.Column("head", sa.String(length=16), nullable=False),
        sa.Column("log_target", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("params", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["city_id"],
            ["cities.id"],
            name=op.f("fk_regressors_city_id_cities"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_regressors_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regressors")),
    )
    with op.batch_alter_table("regressors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_regressors_model_version_id"), ["model_version_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("regressors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_regressors_model_version_id"))

    op.drop_table("regressors")
