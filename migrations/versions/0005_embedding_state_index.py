"""Embeddings: index (model_version_id, kind, revision) instead of (model_version_id, kind).

It serves everything the old one did (a model version's rows of one kind) and also covers the
FAISS cache's staleness check (count and newest revision of a model version's rows of one
kind), which then reads the index instead of the table's wide rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_embeddings_model_version_id_kind", table_name="embeddings")
    op.create_index(
        "ix_embeddings_model_version_id_kind_revision",
        "embeddings",
        ["model_version_id", "kind", "revision"],
    )


def downgrade() -> None:
    op.drop_index("ix_embeddings_model_version_id_kind_revision", table_name="embeddings")
    op.create_index(
        "ix_embeddings_model_version_id_kind", "embeddings", ["model_version_id", "kind"]
    )
