"""Text embedding cache; embeddings.imputed marks vectors of regions lacking the modality.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from musecl_store.store.types import Vector

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "text_embeddings",
        sa.Column("encoder", sa.String(length=200), nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("vector", Vector(), nullable=False),
        sa.PrimaryKeyConstraint("encoder", "content_hash", name=op.f("pk_text_embeddings")),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("imputed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_column("imputed")
    op.drop_table("text_embeddings")
