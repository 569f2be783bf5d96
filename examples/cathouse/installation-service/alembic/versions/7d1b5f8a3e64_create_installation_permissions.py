"""create installation_permissions

Revision ID: 7d1b5f8a3e64
Revises: 2a6c9e4b8f53
Create Date: 2025-01-15 10:00:00+00:00

Service: installation-service. Schema "installation" only; permission_id points at
catalog.permissions.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d1b5f8a3e64"
down_revision: str | Sequence[str] | None = "2a6c9e4b8f53"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "installation_permissions",
        sa.Column("installation_id", sa.Uuid(), nullable=False),
        sa.Column("permission_id", sa.Uuid(), nullable=False),
        sa.Column(
            "granted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installation.installations.id"],
            name="fk_installation_permissions_installation_id_installations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["permission_id"],
            ["catalog.permissions.id"],
            name="fk_installation_permissions_permission_id_permissions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "installation_id", "permission_id", name="pk_installation_permissions"
        ),
        schema="installation",
    )


def downgrade() -> None:
    op.drop_table("installation_permissions", schema="installation")
