"""Item 3, second half: whoever takes an endpoint's port never receives a password.

Once an endpoint is gone (its branch deleted, the server stopped), another local user
can bind its port, answer TLS with a certificate of their own and ask for the password
in clear. Every client of a URL we handed out (psycopg, asyncpg with the raw URL, our
SQLAlchemy engines, and an app reading the `.env` of `cathouse-branch up`) must fail
before the password leaves it: the URLs say `sslmode=verify-full` with the home's CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import psycopg
import pytest
from cathouse_harness.config.settings import ServiceConfig
from cathouse_harness.db.engines import create_service_engine
from cathouse_harness.support.env import overridden

from tests.cli._support import cli
from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    delete_branch,
    start_test_server,
)
from tests.plugin._support import copy_example
from tests.security._impostor import Impostor


@pytest.fixture(scope="module")
def gone_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The direct and pooled URLs of a branch that has been deleted (its ports are free)."""
    with start_test_server(tmp_path_factory.mktemp("impostor-home")) as info, api_client(info) as client:
        created = create_ready_branch(client, info.project_id, name="taken-over")
        branch_id = created["branch"]["id"]
        urls = {
            "direct": connection_uri(client, info.project_id, branch_id, pooled=False),
            "pooled": connection_uri(client, info.project_id, branch_id, pooled=True),
        }
        delete_branch(client, info.project_id, branch_id)
        yield urls


def _address(url: str) -> tuple[str, int]:
    """Where the URL connects: the endpoint's own address on 5432, or 127.0.0.1 and a port."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return parts.hostname, parts.port or 5432


def _password(url: str) -> bytes:
    password = urlsplit(url).password
    assert password
    return unquote(password).encode()


def _psycopg(url: str) -> None:
    psycopg.connect(url, connect_timeout=5).close()


def _asyncpg(url: str) -> None:
    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    asyncio.run(connect())


def _open_engine(engine: Any) -> None:
    async def connect() -> None:
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    asyncio.run(connect())


def _engine(url: str) -> None:
    _open_engine(create_service_engine(ServiceConfig(name="impostor-probe"), url))


def _db_session_engine(url: str) -> None:
    from cathouse_harness.db.rollback import session_engine

    _open_engine(session_engine(url))


def _sqlalchemy_plain(url: str) -> None:
    """An app's own engine on DATABASE_URL, as written to `.env` (no help from us)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    _open_engine(create_async_engine(url))


def _refused_without_the_password(
    connect: Callable[[str], None], url: str, password: bytes, directory: Path
) -> None:
    # each driver fails with its own exception type; what matters is what the impostor got
    host, port = _address(url)
    with Impostor(port, directory, host) as impostor, pytest.raises(Exception) as raised:  # noqa: PT011
        connect(url)
    assert impostor.connections >= 1, "the client never reached the impostor: the test proves nothing"
    assert password not in bytes(impostor.received), f"the password reached the impostor ({raised.value!r})"


@pytest.mark.parametrize("kind", ["direct", "pooled"])
@pytest.mark.parametrize(
    "connect",
    [_psycopg, _asyncpg, _engine, _db_session_engine],
    ids=["psycopg", "asyncpg", "engine", "db_session"],
)
def test_a_handed_out_url_never_gives_its_password_to_the_ports_next_owner(
    gone_endpoint: dict[str, str], kind: str, connect: Callable[[str], None], tmp_path: Path
) -> None:
    url = gone_endpoint[kind]
    _refused_without_the_password(connect, url, _password(url), tmp_path)


def test_the_env_file_of_up_never_gives_its_password_to_the_ports_next_owner(tmp_path: Path) -> None:
    from dotenv import dotenv_values

    project = copy_example(tmp_path / "project")
    code, _, err = cli("up", "--name", "impostor-env", cwd=project)
    assert code == 0, err
    values: dict[str, Any] = {k: v for k, v in dotenv_values(project / ".env").items() if v is not None}
    code, _, err = cli("down", cwd=project)
    assert code == 0, err
    database_url, migration_url = values["DATABASE_URL"], values["MIGRATION_DATABASE_URL"]
    # the app loads the `.env` into its environment (python-dotenv's load_dotenv)
    with overridden(values):
        _refused_without_the_password(
            _sqlalchemy_plain, database_url, _password(database_url), tmp_path
        )
        _refused_without_the_password(
            _psycopg, migration_url, _password(migration_url), tmp_path
        )
