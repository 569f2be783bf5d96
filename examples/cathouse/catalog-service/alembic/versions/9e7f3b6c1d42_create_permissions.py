"""create permissions

Revision ID: 9e7f3b6c1d42
Revises: 5c2d8e1f4a30
Create Date: 2025-01-14 10:00:00+00:00

Service: catalog-service. Schema "catalog" only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9e7f3b6c1d42"
down_revision: str | Sequence[str] | None = "5c2d8e1f4a30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "permissions",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("cat_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["cat_id"],
            ["catalog.cats.id"],
            name="fk_permissions_cat_id_cats",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_permissions"),
        sa.UniqueConstraint("cat_id", "name", name="uq_permissions_cat_id_name"),
        schema="catalog",
    )


def downgrade() -> None:
    op.drop_table("permissions", schema="catalog")
