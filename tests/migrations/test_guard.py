"""While a service migrates, no connection reaches anything but the branch.

A listening socket stands in for "another database": a refused connection must be
refused before it is even opened, so the listener must see no connection at all.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

import asyncpg
import psycopg
import psycopg2
import pytest
from cathouse_harness.db.urls import endpoint_of
from cathouse_harness.migrate.guard import ForeignDatabaseRefused, only_connections_to, refused_in
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests._listener import accepted, listening


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with listening() as server:
        yield server


def foreign(server: socket.socket) -> str:
    return f"postgresql://someone:HiddenPw-42@127.0.0.1:{server.getsockname()[1]}/production"


def _sqlalchemy_sync(url: str) -> None:
    with create_engine(url.replace("postgresql://", "postgresql+psycopg://")).connect() as c:
        c.execute(text("SELECT 1"))


def _sqlalchemy_psycopg2(url: str) -> None:
    with create_engine(url.replace("postgresql://", "postgresql+psycopg2://")).connect() as c:
        c.execute(text("SELECT 1"))


def _sqlalchemy_async(url: str) -> None:
    async def run() -> None:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with engine.connect() as c:
                await c.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _asyncpg(url: str) -> None:
    asyncio.run(asyncpg.connect(url))


def _asyncpg_keywords(url: str) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    asyncio.run(asyncpg.connect(host="127.0.0.1", port=port, user="someone", database="production"))


def _psycopg(url: str) -> None:
    psycopg.connect(url)


def _psycopg_conninfo(url: str) -> None:
    port = url.rsplit(":", 1)[1].split("/")[0]
    psycopg.Connection.connect(f"host=127.0.0.1 port={port} dbname=production user=someone")


def _psycopg2(url: str) -> None:
    psycopg2.connect(url)


WAYS: dict[str, Callable[[str], None]] = {
    "sqlalchemy+psycopg": _sqlalchemy_sync,
    "sqlalchemy+psycopg2": _sqlalchemy_psycopg2,
    "sqlalchemy+asyncpg": _sqlalchemy_async,
    "asyncpg url": _asyncpg,
    "asyncpg keywords": _asyncpg_keywords,
    "psycopg url": _psycopg,
    "psycopg conninfo": _psycopg_conninfo,
    "psycopg2 url": _psycopg2,
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_way_to_another_database_is_refused_before_it_connects(
    way: str, listener: socket.socket, tmp_path
) -> None:
    env_py = tmp_path / "alembic" / "env.py"
    branch = endpoint_of("postgresql://owner:pw@127.0.0.1:1/cathouse")
    with only_connections_to(branch, env_py, "billing-service"), pytest.raises(Exception) as caught:
        WAYS[way](foreign(listener))
    refusal = refused_in(caught.value)
    assert refusal is not None, caught.value
    assert not accepted(listener)
    text = str(refusal)
    assert "HiddenPw-42" not in text and "\n" not in text
    assert str(env_py) in text and "billing-service" in text
    assert f"{listener.getsockname()[1]}/production" in text
    assert refusal.exit_code == 2


def test_a_connect_that_leaves_everything_to_libpq_variables_is_judged_by_them(
    listener: socket.socket, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    branch = urlsplit(fresh_database_url)
    for key, value in (("PGHOST", branch.hostname), ("PGPORT", str(branch.port)),
                       ("PGDATABASE", branch.path.lstrip("/")), ("PGUSER", branch.username),
                       ("PGPASSWORD", unquote(branch.password or ""))):
        monkeypatch.setenv(key, value or "")
    with only_connections_to(endpoint_of(fresh_database_url), None):
        with psycopg.connect() as connection:  # everything from PG*: the branch
            assert connection.execute("SELECT 1").fetchone() == (1,)
        monkeypatch.setenv("PGPORT", str(listener.getsockname()[1]))
        with pytest.raises(ForeignDatabaseRefused):
            psycopg.connect()
    assert not accepted(listener)


def test_the_branch_itself_and_anything_after_the_block_connect(
    listener: socket.socket, fresh_database_url: str
) -> None:
    with only_connections_to(endpoint_of(fresh_database_url), None):
        _sqlalchemy_sync(fresh_database_url)
        _psycopg2(fresh_database_url)
        asyncio.run(_fetch_one(fresh_database_url))
    # the guard is gone with the block: the same foreign attempt now reaches the listener
    with pytest.raises(Exception) as caught:
        psycopg.connect(foreign(listener), connect_timeout=1)
    assert not isinstance(caught.value, ForeignDatabaseRefused)
    assert accepted(listener)


async def _fetch_one(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
