"""TEMPORARY: stand-ins for the shared fixtures tests/conftest.py will provide.

Delete once tests/conftest.py defines pg_admin_dsn and fresh_database_url.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

SCRATCH = "postgresql://postgres@127.0.0.1:55502/postgres"


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(SCRATCH)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    return SCRATCH


@pytest.fixture
def fresh_database_url(pg_admin_dsn: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
