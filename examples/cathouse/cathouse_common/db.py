"""Database access of a Cat House service: one lazy engine on the pooled DATABASE_URL.

`service_database(SERVICE)` gives a service its engine, its sessions, the FastAPI
dependency `get_db` and `dispose`; `SERVICE` (name, schema, pool sizes, read_only) is
all a service states.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache

from cathouse_harness.config.settings import ServiceConfig
from cathouse_harness.db.engines import create_service_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class DatabaseNotConfigured(RuntimeError):
    """DATABASE_URL is not set."""


@dataclass(frozen=True)
class ServiceDatabase:
    """One service's database access. The engine is made on first use, from the
    DATABASE_URL of that moment, and kept until `dispose()`."""

    service: ServiceConfig
    get_engine: Callable[[], AsyncEngine]
    get_sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    get_db: Callable[[], AsyncIterator[AsyncSession]]
    dispose: Callable[[], Awaitable[None]]


def service_database(service: ServiceConfig) -> ServiceDatabase:
    @lru_cache(maxsize=1)
    def get_engine() -> AsyncEngine:
        url = os.environ.get("DATABASE_URL")
        if not url:
            raise DatabaseNotConfigured("DATABASE_URL is not set")
        # DATABASE_URL is the pooled endpoint by contract (PgBouncer in transaction mode,
        # on Neon and on the embedded default), whatever its host looks like. A read_only
        # service gets read-only transactions from create_service_engine.
        return create_service_engine(
            service, url, pgbouncer=True, echo=os.environ.get("DEBUG") == "1"
        )

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

    return ServiceDatabase(
        service=service,
        get_engine=get_engine,
        get_sessionmaker=get_sessionmaker,
        get_db=get_db,
        dispose=dispose,
    )
