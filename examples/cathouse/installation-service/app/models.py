"""Tables of installation-service, all in schema `installation`.

`auth.users`, `catalog.cats` and `catalog.permissions` belong to other services; they are
declared here only as targets of foreign keys, and env.py keeps autogenerate away
from them. This is why installation-service migrates after auth- and catalog-service.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA = "installation"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING)


# owned by other services: here only so the foreign keys below resolve
auth_users = Table("users", Base.metadata, Column("id", Uuid, primary_key=True), schema="auth")
catalog_cats = Table(
    "cats", Base.metadata, Column("id", Uuid, primary_key=True), schema="catalog"
)
catalog_permissions = Table(
    "permissions",
    Base.metadata,
    Column("id", Uuid, primary_key=True),
    Column("cat_id", Uuid),
    Column("name", String(100)),
    schema="catalog",
)


class Installation(Base):
    __tablename__ = "installations"
    __table_args__ = (UniqueConstraint("user_id", "cat_id"),)

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("auth.users.id", ondelete="CASCADE"))
    cat_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("catalog.cats.id", ondelete="CASCADE"))
    installed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    permissions: Mapped[list[InstallationPermission]] = relationship(
        back_populates="installation", cascade="all, delete-orphan"
    )


class InstallationPermission(Base):
    __tablename__ = "installation_permissions"

    installation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("installation.installations.id", ondelete="CASCADE"), primary_key=True
    )
    permission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("catalog.permissions.id", ondelete="CASCADE"), primary_key=True
    )
    granted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    installation: Mapped[Installation] = relationship(back_populates="permissions")
