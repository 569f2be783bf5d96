"""create installations

Revision ID: 2a6c9e4b8f53
Revises:
Create Date: 2025-01-08 10:00:00+00:00

Service: installation-service. Schema "installation" only; installations point at
auth.users and catalog.cats, so auth- and catalog-service must have migrated first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2a6c9e4b8f53"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "installations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("cat_id", sa.Uuid(), nullable=False),
        sa.Column(
            "installed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth.users.id"],
            name="fk_installations_user_id_users",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["cat_id"],
            ["catalog.cats.id"],
            name="fk_installations_cat_id_cats",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_installations"),
        sa.UniqueConstraint("user_id", "cat_id", name="uq_installations_user_id_cat_id"),
        schema="installation",
    )


def downgrade() -> None:
    op.drop_table("installations", schema="installation")
