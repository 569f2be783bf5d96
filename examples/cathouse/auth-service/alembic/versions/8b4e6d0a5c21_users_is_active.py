"""users: is_active flag, index on created_at

Revision ID: 8b4e6d0a5c21
Revises: 3f1a9c2b7d10
Create Date: 2025-01-13 10:00:00+00:00

Service: auth-service. Schema "auth" only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8b4e6d0a5c21"
down_revision: str | Sequence[str] | None = "3f1a9c2b7d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        schema="auth",
    )
    op.create_index("ix_users_created_at", "users", ["created_at"], schema="auth")


def downgrade() -> None:
    op.drop_index("ix_users_created_at", table_name="users", schema="auth")
    op.drop_column("users", "is_active", schema="auth")
