"""The services' engines: the seed's settings, the proxy's read-only session, the budget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from cathouse_harness.config.settings import Settings
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES = ("auth-service", "catalog-service", "installation-service", "proxy-service")


def test_pools_fit_the_connection_budget(cathouse_settings: Settings) -> None:
    assert cathouse_settings.connection_limit == 10
    assert cathouse_settings.pool_budget == 10
    assert {s.name: (s.pool_size, s.max_overflow) for s in cathouse_settings.services} == {
        "auth-service": (2, 1),
        "catalog-service": (2, 1),
        "installation-service": (2, 1),
        "proxy-service": (1, 0),
    }


async def test_all_services_at_full_pool_use_ten_connections(
    service_engine: Callable[[str], AsyncEngine],
) -> None:
    engines = [service_engine(name) for name in SERVICES]
    connections = []
    for engine in engines:
        pool = engine.pool
        for _ in range(pool.size() + engine.pool._max_overflow):  # type: ignore[attr-defined]
            connections.append(await engine.connect())
    assert len(connections) == 10
    results = await asyncio.gather(*(c.scalar(text("SELECT 1")) for c in connections))
    assert results == [1] * 10
    for connection in connections:
        await connection.close()


async def test_engine_settings_hold_on_a_live_connection(
    service_engine: Callable[[str], AsyncEngine],
) -> None:
    engine = service_engine("auth-service")
    assert engine.pool.size() == 2
    assert engine.pool._recycle == 3600  # type: ignore[attr-defined]
    assert engine.pool._pre_ping is True  # type: ignore[attr-defined]
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_proxy_service_cannot_write(service_engine: Callable[[str], AsyncEngine]) -> None:
    engine = service_engine("proxy-service")
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM auth.users")) >= 0
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await connection.execute(text("INSERT INTO auth.users (email) VALUES ('proxy@x.test')"))
