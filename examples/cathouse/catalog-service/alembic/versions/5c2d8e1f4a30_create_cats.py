"""create cats

Revision ID: 5c2d8e1f4a30
Revises:
Create Date: 2025-01-07 10:00:00+00:00

Service: catalog-service. Schema "catalog" only; cats.owner_id points at auth.users,
so auth-service must have migrated first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c2d8e1f4a30"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cats",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["auth.users.id"],
            name="fk_cats_owner_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_cats"),
        schema="catalog",
    )
    op.create_index("ix_cats_owner_id", "cats", ["owner_id"], schema="catalog")


def downgrade() -> None:
    op.drop_index("ix_cats_owner_id", table_name="cats", schema="catalog")
    op.drop_table("cats", schema="catalog")
