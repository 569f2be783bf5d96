"""Fixtures of the adoption tests: a database the project's own configuration names."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import asyncpg
import pytest

from tests.conftest import TEST_ROLE, create_database, drop_database, tcp_port


def run_plugin(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, run_id: str,
               workers: str) -> pytest.RunResult:
    """`pytest -p cathouse_harness -n <workers>` on the pytester project, as run `run_id`,
    with branches never kept (CI) and nothing of the outer run's xdist or options."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CATHOUSE_RUN_ID", run_id)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider",
                                         "-n", workers)


def tables_of(url: str) -> set[str]:
    """`schema.table` of every table and of the version tables in the database at `url`."""

    async def read() -> set[str]:
        connection = await asyncpg.connect(url)
        try:
            rows = await connection.fetch(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables"
                " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        finally:
            await connection.close()
        return {row[0] for row in rows}

    return asyncio.run(read())


@pytest.fixture
def foreign_database_url(pg_admin_dsn: str, test_role_password: str) -> Iterator[str]:
    """A real database that is not the branch, holding one table of its own: the
    "production" a project's alembic.ini, .env or env.py names."""
    name = f"prod_{secrets.token_hex(6)}"
    create_database(pg_admin_dsn, name, TEST_ROLE)
    port = tcp_port(pg_admin_dsn)
    url = f"postgresql://{TEST_ROLE}:{quote(test_role_password, safe='')}@127.0.0.1:{port}/{name}"

    async def seed() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("CREATE TABLE precious (id int PRIMARY KEY)")
        finally:
            await connection.close()

    asyncio.run(seed())
    yield url
    drop_database(pg_admin_dsn, name)
