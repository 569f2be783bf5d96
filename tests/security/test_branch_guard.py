"""While a test session holds a branch, nothing but the branch is reachable.

The policy the plugin installs (`BranchOnly`) is driven here directly, with the suite's
own PostgreSQL standing in for the branch. A listening socket stands in for "another
PostgreSQL": a refused connection must be refused before it opens, so the listener must
see no connection at all. The plugin's use of it is tested in tests/plugin/test_guard.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psycopg
import psycopg2
import pytest
from asyncpg import connect as asyncpg_connect_imported_early
from cathouse_harness.config.settings import load_settings
from cathouse_harness.db.guard import (
    BranchOnly,
    NotTheBranch,
    guarded_by,
    installed,
    parse_allowed,
    refused_in,
)
from cathouse_harness.errors import ConfigError
from psycopg import connect as psycopg_connect_imported_early
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests._listener import accepted, listening


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with listening() as server:
        yield server


def foreign(server: socket.socket, database: str = "app_dev") -> str:
    return f"postgresql://dev:DevSecret-77@127.0.0.1:{server.getsockname()[1]}/{database}"


def branch_policy(branch_url: str, *allowed: str, env_file: Path | None = None) -> BranchOnly:
    parts = urlsplit(branch_url)
    assert parts.hostname and parts.port
    # a branch's two endpoints; the pooled one is not used by these tests
    return BranchOnly([(parts.hostname, parts.port), ("127.0.0.2", 1)],
                      [parse_allowed(a) for a in allowed], who=lambda: "tests/test_x.py::test_y",
                      env_file=env_file)


def _sqlalchemy(driver: str) -> Callable[[str], None]:
    def run(url: str) -> None:
        engine = create_engine(url.replace("postgresql://", f"postgresql+{driver}://"))
        try:
            with engine.connect() as c:
                assert c.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()

    return run


def _sqlalchemy_async(url: str) -> None:
    async def run() -> None:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with engine.connect() as c:
                assert (await c.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()

    asyncio.run(run())


def _asyncpg(url: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()

    asyncio.run(run())


def _asyncpg_early_name(url: str) -> None:
    async def run() -> None:
        connection = await asyncpg_connect_imported_early(url)
        await connection.close()

    asyncio.run(run())


def _asyncpg_pool(url: str) -> None:
    async def run() -> None:
        async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
            assert await pool.fetchval("SELECT 1") == 1

    asyncio.run(run())


def _psycopg(url: str) -> None:
    with psycopg.connect(url) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def _psycopg_keywords(url: str) -> None:
    parts = urlsplit(url)
    with psycopg_connect_imported_early(host=parts.hostname, port=parts.port, user=parts.username,
                                        password=parts.password, dbname=parts.path[1:]) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def _psycopg_async(url: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(url) as c:
            assert await (await c.execute("SELECT 1")).fetchone() == (1,)

    asyncio.run(run())


def _psycopg2(url: str) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        connection.close()


WAYS: dict[str, Callable[[str], None]] = {
    "sqlalchemy+psycopg": _sqlalchemy("psycopg"),
    "sqlalchemy+psycopg2": _sqlalchemy("psycopg2"),
    "sqlalchemy+asyncpg": _sqlalchemy_async,
    "asyncpg": _asyncpg,
    "asyncpg, a name imported before the guard": _asyncpg_early_name,
    "asyncpg pool": _asyncpg_pool,
    "psycopg": _psycopg,
    "psycopg keywords, a name imported before the guard": _psycopg_keywords,
    "psycopg async": _psycopg_async,
    "psycopg2": _psycopg2,
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_driver_is_refused_another_postgresql_before_it_connects(
    way: str, listener: socket.socket, fresh_database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_DATABASE_URL", foreign(listener))
    policy = branch_policy(fresh_database_url)
    with guarded_by(policy), pytest.raises(Exception) as caught:
        WAYS[way](foreign(listener))
    refusal = refused_in(caught.value)
    assert isinstance(refusal, NotTheBranch), caught.value
    assert not accepted(listener)
    line = str(refusal)
    assert "\n" not in line and "DevSecret-77" not in line
    assert line.startswith("tests/test_x.py::test_y: connection to ")
    assert f"127.0.0.1:{listener.getsockname()[1]}/app_dev" in line.split(" (")[0]
    assert "(environment APP_DATABASE_URL)" in line
    assert "[tool.cathouse_harness.env]" in line and "allow_connections" in line
    # the plugin fails the test with it even if the test caught it
    assert policy.take_refusals() == [refusal]
    assert policy.take_refusals() == []


@pytest.mark.parametrize("way", sorted(WAYS))
def test_the_branch_and_a_database_made_on_it_during_the_test_connect(
    way: str, fresh_database_url: str
) -> None:
    made = f"made_{abs(hash(way)) % 10**8}"
    with guarded_by(branch_policy(fresh_database_url)):
        WAYS[way](fresh_database_url)
        with psycopg.connect(fresh_database_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{made}"')
        try:
            WAYS[way](fresh_database_url.rsplit("/", 1)[0] + f"/{made}")
        finally:
            with psycopg.connect(fresh_database_url, autocommit=True) as c:
                c.execute(f'DROP DATABASE "{made}"')
    assert not installed()


def test_allow_connections_lets_a_named_target_through(
    listener: socket.socket, fresh_database_url: str
) -> None:
    port = listener.getsockname()[1]
    with guarded_by(branch_policy(fresh_database_url, f"127.0.0.1:{port}/app_dev")):
        with pytest.raises(psycopg.OperationalError):  # not refused: it reached the listener
            psycopg.connect(foreign(listener), connect_timeout=1)
        assert accepted(listener)
        # the entry names one database: another on the same server is still refused
        with pytest.raises(NotTheBranch):
            psycopg.connect(foreign(listener, "other"), connect_timeout=1)
    assert not accepted(listener)


def test_settings_in_parts_are_traced_to_their_dotenv_entries(
    listener: socket.socket, fresh_database_url: str, tmp_path: Path
) -> None:
    port = listener.getsockname()[1]
    env_file = tmp_path / ".env"
    env_file.write_text(f"DATABASE__HOSTNAME=127.0.0.1\nDATABASE__PORT={port}\n"
                        "DATABASE__PASSWORD=DevSecret-77\n")
    with guarded_by(branch_policy(fresh_database_url, env_file=env_file)), \
            pytest.raises(NotTheBranch) as caught:
        psycopg.connect(host="127.0.0.1", port=port, dbname="app_dev", password="DevSecret-77")
    line = str(caught.value)
    assert f"connection to 127.0.0.1:{port}/app_dev ({env_file} DATABASE__HOSTNAME/DATABASE__PORT)" in line
    assert "DevSecret-77" not in line
    assert not accepted(listener)


def test_sqlite_is_no_postgresql_and_stays_reachable(fresh_database_url: str, tmp_path: Path) -> None:
    with guarded_by(branch_policy(fresh_database_url)):
        engine = create_engine(f"sqlite:///{tmp_path / 'local.db'}")
        with engine.connect() as c:
            assert c.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()


def test_the_hooks_go_with_the_last_policy(listener: socket.socket, fresh_database_url: str) -> None:
    outer = branch_policy(fresh_database_url)
    inner = branch_policy(fresh_database_url, f"127.0.0.1:{listener.getsockname()[1]}")
    with guarded_by(outer):
        with guarded_by(inner):  # the innermost policy decides
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(foreign(listener), connect_timeout=1)
            assert accepted(listener)
        with pytest.raises(NotTheBranch):
            psycopg.connect(foreign(listener), connect_timeout=1)
    assert not installed()
    assert psycopg.connect.__func__ is psycopg.Connection.connect.__func__  # nothing left patched
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(foreign(listener), connect_timeout=1)
    assert accepted(listener)


@pytest.mark.parametrize(("entry", "reason"), [
    ("", "empty"),
    ("mysql://h/db", "not a PostgreSQL URL"),
    ("localhost:port/db", "port that is not a number"),
    (":5432", "names no host"),
    ("h:1/db/extra", "host[:port][/database]"),
])
def test_a_bad_allow_connections_entry_is_one_line(tmp_path: Path, entry: str, reason: str) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.cathouse_harness]\nallow_connections = ["{entry}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    line = str(caught.value)
    assert line.startswith("allow_connections (from ") and reason in line and "\n" not in line


def test_allow_connections_reads_urls_and_short_forms(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.cathouse_harness]\nallow_connections = ["postgresql://u:pw@Reports.local:5433/r", '
        '"localhost"]\n')
    first, second = load_settings(tmp_path, environ={}).allow_connections
    assert (first.host, first.port, first.database) == ("reports.local", 5433, "r")
    assert "pw" not in first.text
    assert (second.host, second.port, second.database) == ("localhost", None, None)
    assert second.permits("localhost", 6543, "anything")


LATE_IMPORT = """
import socket, sys
from cathouse_harness.db.guard import BranchOnly, NotTheBranch, install, uninstall

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(4)
server.setblocking(False)
url = f"postgresql://dev:pw@127.0.0.1:{server.getsockname()[1]}/app_dev"
policy = BranchOnly([("127.0.0.2", 1)])
install(policy)
assert not {"asyncpg", "psycopg", "psycopg2", "sqlalchemy"} & set(sys.modules), "imported early"
import asyncio, asyncpg, psycopg, psycopg2, sqlalchemy
from importlib.machinery import SourceFileLoader
assert isinstance(psycopg2.__loader__, SourceFileLoader), psycopg2.__loader__
assert isinstance(psycopg2.__spec__.loader, SourceFileLoader)
refused = 0
engine = sqlalchemy.create_engine(url.replace("postgresql:", "postgresql+psycopg:"))
for connect in (lambda: psycopg2.connect(url), lambda: psycopg.connect(url),
                lambda: asyncio.run(asyncpg.connect(url)), lambda: engine.connect()):
    try:
        connect()
    except NotTheBranch:
        refused += 1
try:
    server.accept()
    print("a connection reached the listener")
except BlockingIOError:
    pass
uninstall(policy)
print(f"refused {refused}")
"""


def test_a_driver_is_not_imported_to_be_guarded_and_is_guarded_once_imported() -> None:
    """Installing the policy imports no driver (about a second of imports for a session
    that uses none); a driver imported after it is patched as it loads, its module keeping
    its own loader."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LATE_IMPORT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused 4"
