"""create users

Revision ID: 3f1a9c2b7d10
Revises:
Create Date: 2025-01-06 10:00:00+00:00

Service: auth-service. Schema "auth" only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f1a9c2b7d10"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
        schema="auth",
    )


def downgrade() -> None:
    op.drop_table("users", schema="auth")
