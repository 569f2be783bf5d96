"""CREATE / DROP DATABASE sent through an endpoint act on that endpoint's branch, as on
Neon: the new database is PostgreSQL's own in the branch's instance (listed by the API,
carried by forks, reached through the endpoint's direct and pooled listeners), and no
other branch has it. Each driver's protocol: asyncpg's `execute` (simple
query), psycopg (extended, prepared after five runs), SQLAlchemy over asyncpg (extended)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from cathouse_harness.local.server import LocalServerInfo

from tests.local._server import (
    connection_uri,
    create_ready_branch,
    delete_branch,
    sql,
    unique,
    wait_operations,
)


def _on(uri: str, database: str) -> str:
    """The same endpoint and role, another database."""
    return uri.replace("/cathouse?", f"/{database}?", 1)


def _cluster_databases(server: LocalServerInfo, branch: dict[str, Any]) -> set[str]:
    """The databases of the branch's own instance (real names)."""
    return {r["datname"] for r in sql(branch["direct"], "SELECT datname FROM pg_database")}


def _listed(client: httpx.Client, project: str, branch_id: str) -> set[str]:
    answer = client.get(f"/projects/{project}/branches/{branch_id}/databases")
    return {db["name"] for db in answer.json()["databases"]}


async def _script(uri: str, *statements: str) -> list[str]:
    conn = await asyncpg.connect(uri)
    try:
        return [await conn.execute(statement) for statement in statements]
    finally:
        await conn.close()


def run(uri: str, *statements: str) -> list[str]:
    """asyncpg's `execute` without arguments: the simple query protocol."""
    return asyncio.run(_script(uri, *statements))


@pytest.fixture
def branch(client: httpx.Client, project: str) -> Iterator[dict[str, Any]]:
    made = create_ready_branch(client, project, name=unique("sqldb"))
    branch_id = made["branch"]["id"]
    direct = connection_uri(client, project, branch_id, pooled=False)
    run(direct, "CREATE TABLE cats (name text)", "INSERT INTO cats VALUES ('tom')")
    yield {
        "id": branch_id,
        "direct": direct,
        "pooled": connection_uri(client, project, branch_id, pooled=True),
    }
    delete_branch(client, project, branch_id)


def test_create_from_template_over_simple_query(
    server: LocalServerInfo, client: httpx.Client, project: str, branch: dict[str, Any]
) -> None:
    before = _cluster_databases(server, branch)
    tags = run(branch["direct"], 'CREATE DATABASE "gw1" TEMPLATE cathouse;')
    assert tags == ["CREATE DATABASE"]
    for uri in (branch["direct"], branch["pooled"]):
        assert [r["name"] for r in sql(_on(uri, "gw1"), "SELECT name FROM cats")] == ["tom"]
    assert _listed(client, project, branch["id"]) >= {"cathouse", "gw1"}
    new = _cluster_databases(server, branch) - before
    assert new == {"gw1"}, new
    # another branch has no such database
    other = create_ready_branch(client, project, name=unique("other"))
    try:
        other_uri = connection_uri(client, project, other["branch"]["id"], pooled=False)
        with pytest.raises(asyncpg.PostgresError) as missing:
            sql(_on(other_uri, "gw1"), "SELECT 1")
        # an instance says nothing of what it has before a password
        assert missing.value.sqlstate == "28P01"
    finally:
        delete_branch(client, project, other["branch"]["id"])


def test_create_and_drop_over_psycopg_extended_protocol(
    server: LocalServerInfo, client: httpx.Client, project: str, branch: dict[str, Any]
) -> None:
    before = _cluster_databases(server, branch)
    with psycopg.connect(branch["direct"], autocommit=True) as conn:
        # seven rounds: psycopg prepares a statement run five times (named Parse, then
        # Bind alone), as a worker's reset loop would
        for _ in range(7):
            conn.execute('DROP DATABASE IF EXISTS "gw_Two" WITH (FORCE)')
            cursor = conn.execute('CREATE DATABASE "gw_Two" TEMPLATE "cathouse"')
            assert cursor.statusmessage == "CREATE DATABASE"
        assert conn.execute("SELECT count(*) FROM cats").fetchone() == (1,)
    with psycopg.connect(_on(branch["pooled"], "gw_Two")) as conn:
        assert conn.execute("SELECT name FROM cats").fetchall() == [("tom",)]
    assert "gw_Two" in _listed(client, project, branch["id"])
    assert len(_cluster_databases(server, branch) - before) == 1


def test_create_and_drop_over_sqlalchemy_asyncpg(
    client: httpx.Client, project: str, branch: dict[str, Any]
) -> None:
    from cathouse_harness.db.engines import tls_connect_args
    from cathouse_harness.db.urls import ASYNCPG_SCHEME, url_for_driver
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def script() -> list[str]:
        engine = create_async_engine(
            url_for_driver(branch["direct"], ASYNCPG_SCHEME),
            isolation_level="AUTOCOMMIT",
            connect_args=tls_connect_args(branch["direct"]),
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(text("CREATE DATABASE gw3 TEMPLATE cathouse"))
                made = _listed(client, project, branch["id"])
                await conn.execute(text("DROP DATABASE gw3"))
                return sorted(made - _listed(client, project, branch["id"]))
        finally:
            await engine.dispose()

    assert asyncio.run(script()) == ["gw3"]


def test_drop_with_force_ends_the_other_connections(branch: dict[str, Any]) -> None:
    async def script() -> None:
        await _script(branch["direct"], "CREATE DATABASE gw4")
        other = await asyncpg.connect(_on(branch["pooled"], "gw4"))
        issuer = await asyncpg.connect(branch["direct"])
        try:
            with pytest.raises(asyncpg.ObjectInUseError, match='database "gw4" is being accessed') as refused:
                await issuer.execute("DROP DATABASE gw4")
            assert refused.value.detail == "There is 1 other session using the database."
            assert await other.fetchval("SELECT 1") == 1
            assert await issuer.execute("DROP DATABASE gw4 WITH (FORCE)") == "DROP DATABASE"
            with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresError, OSError)):
                await other.fetchval("SELECT 1")
            assert await issuer.fetchval("SELECT count(*) FROM cats") == 1
        finally:
            await issuer.close()
            other.terminate()

    asyncio.run(script())
    with pytest.raises(asyncpg.PostgresError) as gone:
        sql(_on(branch["direct"], "gw4"), "SELECT 1")
    assert gone.value.sqlstate == "28P01"


@pytest.mark.parametrize(
    ("statement", "error", "message"),
    [
        ("CREATE DATABASE cathouse", asyncpg.DuplicateDatabaseError, 'database "cathouse" already exists'),
        (
            "CREATE DATABASE gw5 TEMPLATE nowhere",
            asyncpg.InvalidCatalogNameError,
            'template database "nowhere"',
        ),
        ("CREATE DATABASE gw5 OWNER nobody", asyncpg.UndefinedObjectError, 'role "nobody" does not exist'),
        ("DROP DATABASE nowhere", asyncpg.InvalidCatalogNameError, 'database "nowhere" does not exist'),
        ("DROP DATABASE cathouse", asyncpg.ObjectInUseError, "cannot drop the currently open database"),
    ],
)
def test_refusals_carry_postgresql_sqlstates(
    server: LocalServerInfo, branch: dict[str, Any], statement: str, error: type[Exception], message: str
) -> None:
    before = _cluster_databases(server, branch)
    with pytest.raises(error, match=message):
        run(branch["direct"], statement)
    # the connection goes on after a refusal, and nothing reached the cluster
    assert run(branch["direct"], "SELECT 1") == ["SELECT 1"]
    assert _cluster_databases(server, branch) == before


def test_drop_if_exists_of_a_missing_database_succeeds(branch: dict[str, Any]) -> None:
    assert run(branch["direct"], "DROP DATABASE IF EXISTS nowhere") == ["DROP DATABASE"]


def test_template_in_use_by_another_connection_is_refused(branch: dict[str, Any]) -> None:
    async def script() -> None:
        other = await asyncpg.connect(branch["direct"])
        try:
            with pytest.raises(
                asyncpg.ObjectInUseError, match='source database "cathouse" is being accessed'
            ):
                await _script(branch["direct"], "CREATE DATABASE gw6 TEMPLATE cathouse")
        finally:
            await other.close()
        assert await _script(branch["direct"], "CREATE DATABASE gw6 TEMPLATE cathouse") == ["CREATE DATABASE"]

    asyncio.run(script())


def test_inside_a_transaction_block_postgresql_refuses(branch: dict[str, Any]) -> None:
    with psycopg.connect(branch["direct"]) as conn:  # psycopg opens a transaction
        conn.execute("SELECT 1")
        with pytest.raises(
            psycopg.errors.ActiveSqlTransaction, match="cannot run inside a transaction block"
        ):
            conn.execute("CREATE DATABASE gw7")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM cats").fetchone() == (1,)


def test_read_only_endpoint_refuses(client: httpx.Client, project: str, branch: dict[str, Any]) -> None:
    answer = client.post(
        f"/projects/{project}/endpoints", json={"endpoint": {"branch_id": branch["id"], "type": "read_only"}}
    )
    wait_operations(client, project, answer.json()["operations"])
    params = {
        "branch_id": branch["id"],
        "endpoint_id": answer.json()["endpoint"]["id"],
        "database_name": "cathouse",
        "role_name": "cathouse_owner",
    }
    uri = client.get(f"/projects/{project}/connection_uri", params=params).json()["uri"]
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError, match="read-only transaction"):
        run(uri, "CREATE DATABASE gw8")
    # the endpoint decides, not the session's default (which a session may turn off)
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError, match="read-only transaction"):
        run(uri, "SET default_transaction_read_only = off", "CREATE DATABASE gw8")
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        run(uri, "DROP DATABASE neondb")


def test_a_fork_carries_the_new_database(client: httpx.Client, project: str, branch: dict[str, Any]) -> None:
    run(branch["direct"], "CREATE DATABASE gw9 TEMPLATE cathouse")
    child = create_ready_branch(client, project, name=unique("child"), parent_id=branch["id"])
    try:
        child_uri = connection_uri(client, project, child["branch"]["id"], pooled=False)
        assert "gw9" in _listed(client, project, child["branch"]["id"])
        assert [r["name"] for r in sql(_on(child_uri, "gw9"), "SELECT name FROM cats")] == ["tom"]
    finally:
        delete_branch(client, project, child["branch"]["id"])


def test_two_creates_of_one_name_make_one_database(
    server: LocalServerInfo, client: httpx.Client, project: str, branch: dict[str, Any]
) -> None:
    """Sent at once from two connections (on another database than the template, so
    that neither is in the other's way): one succeeds, the other finds it exists."""
    before = _cluster_databases(server, branch)

    side = f"side_{secrets.token_hex(3)}"  # a record until first used
    body = {"database": {"name": side, "owner_name": "cathouse_owner"}}
    made_side = client.post(f"/projects/{project}/branches/{branch['id']}/databases", json=body)
    wait_operations(client, project, made_side.json()["operations"])

    async def script() -> list[object]:
        conns = [await asyncpg.connect(_on(branch["direct"], side)) for _ in range(2)]
        try:
            return await asyncio.gather(
                *(conn.execute("CREATE DATABASE gw11 TEMPLATE cathouse") for conn in conns),
                return_exceptions=True,
            )
        finally:
            for conn in conns:
                await conn.close()

    outcomes = asyncio.run(script())
    # PostgreSQL's own catalog finds the second when it inserts, as on Neon
    assert sorted(type(o).__name__ for o in outcomes) == ["UniqueViolationError", "str"], outcomes
    assert "gw11" in _listed(client, project, branch["id"])
    made = _cluster_databases(server, branch) - before
    assert made == {side, "gw11"}, made
