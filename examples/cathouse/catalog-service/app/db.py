"""Database access of catalog-service: what is its own; the rest is cathouse_common.db."""

from __future__ import annotations

from typing import Annotated

from cathouse_common.db import service_database
from cathouse_harness.config.settings import ServiceConfig
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

# Must agree with [tool.cathouse_harness] in the project's pyproject.toml (a test checks).
SERVICE = ServiceConfig(
    name="catalog-service", schema="catalog", pool_size=2, max_overflow=1, read_only=False
)

database = service_database(SERVICE)
dispose = database.dispose  # at shutdown, and after DATABASE_URL changes
# the session a route handler receives: `db: DbSession`
DbSession = Annotated[AsyncSession, Depends(database.get_db)]
