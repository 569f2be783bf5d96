"""Database access of auth-service: one engine on the pooled DATABASE_URL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from harness.engines import create_service_engine
from harness.settings import ServiceConfig

# Must agree with [tool.cathouse_harness] in the project's pyproject.toml (a test checks).
SERVICE = ServiceConfig(
    name="auth-service",
    schema="auth",
    pool_size=2,
    max_overflow=1,
    read_only=False,
)


class DatabaseNotConfigured(RuntimeError):
    """DATABASE_URL is not set."""


@lru_cache(maxsize=1)
def get_engine() -> AsyncEngine:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise DatabaseNotConfigured("DATABASE_URL is not set")
    # DATABASE_URL is the pooled endpoint by contract (PgBouncer in transaction mode, on
    # Neon and on the embedded default), whatever its host looks like.
    return create_service_engine(SERVICE, url, pgbouncer=True, echo=os.environ.get("DEBUG") == "1")


@lru_cache(maxsize=1)
def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(), expire_on_commit=False)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with get_sessionmaker()() as session:
        yield session


async def dispose() -> None:
    if get_engine.cache_info().currsize:
        await get_engine().dispose()
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()


# the session a route handler receives: `db: DbSession`
DbSession = Annotated[AsyncSession, Depends(get_db)]
