"""The embedded data plane against a real PostgreSQL (and PgBouncer when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
import pytest_asyncio
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.dataplane import DataPlane, EndpointAddress
from cathouse_harness.local.pgbouncer import find_pgbouncer

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROLE = "cathouse_owner"
PASSWORD = "dp-test-Pa55word-7f3a"
FENCE_TIMEOUT = 0.5


@contextlib.contextmanager
def _cleanup(dp: DataPlane) -> Iterator[None]:
    try:
        yield
    finally:
        if dp.cluster_dir is not None:
            shutil.rmtree(dp.cluster_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dp(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DataPlane]:
    plane = DataPlane(tmp_path_factory.mktemp("home"), storage="memory")
    plane.fence_timeout = FENCE_TIMEOUT
    with _cleanup(plane):
        await plane.start()
        await plane.ensure_role(ROLE, PASSWORD)
        try:
            yield plane
        finally:
            await plane.stop()


_counter = iter(range(10_000))


def fresh(prefix: str = "db") -> str:
    return f"{prefix}_{next(_counter)}"


async def admin(dp: DataPlane, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(dp.admin_dsn(database))


async def sql(dp: DataPlane, database: str, *statements: str) -> None:
    conn = await admin(dp, database)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def scalar(dp: DataPlane, database: str, query: str) -> object:
    conn = await admin(dp, database)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def client(
    address: EndpointAddress,
    *,
    pooled: bool = False,
    database: str = "cathouse",
    password: str = PASSWORD,
) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=address.host,
        port=address.pooled_port if pooled else address.direct_port,
        user=ROLE,
        password=password,
        database=database,
        ssl="require" if address.tls else False,
        statement_cache_size=0,
        timeout=10,
    )


async def parent_with_rows(dp: DataPlane, rows: int = 3) -> str:
    name = fresh("parent")
    await dp.create_database(name, owner=ROLE)
    await sql(
        dp,
        name,
        f"SET ROLE {ROLE}",
        "CREATE SCHEMA app",
        "CREATE TABLE app.items (id serial PRIMARY KEY, note text)",
        "CREATE TABLE app.alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO app.alembic_version VALUES ('abc123')",
        f"INSERT INTO app.items (note) SELECT 'row ' || g FROM generate_series(1, {rows}) g",
    )
    return name


# --- life cycle ----------------------------------------------------------------------


async def test_start_is_idempotent(dp: DataPlane) -> None:
    dsn = dp.admin_dsn()
    await dp.start()
    assert dp.admin_dsn() == dsn
    assert dp.server_version.split(".")[0].isdigit()
    assert await scalar(dp, "postgres", "SHOW fsync") == "off"


async def test_restart_reuses_running_and_stopped_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = DataPlane(home, storage="disk")
    with _cleanup(first):
        await first.start()
        assert "cold_start" in first.timings
        assert await scalar(first, "postgres", "SHOW fsync") == "on"
        await first.create_database("kept", owner="postgres")
        dsn = first.admin_dsn()
        await first.stop(stop_postgres=False)

        second = DataPlane(home, storage="disk")
        await second.start()
        assert "attach" in second.timings
        assert second.admin_dsn() == dsn  # same socket, same persisted port
        assert await second.database_exists("kept")
        await second.stop()

        third = DataPlane(home, storage="disk")
        await third.start()
        assert "cold_start" in third.timings
        assert "initdb" not in third.timings and "initdb_cached" not in third.timings
        assert third.admin_dsn() == dsn
        assert await third.list_databases() == ["kept"]
        await third.stop()
        assert first.cluster_dir is not None
        assert not (first.cluster_dir / "data" / "postmaster.pid").exists()


# --- roles and databases ---------------------------------------------------------------


async def test_ensure_role_is_idempotent_and_changes_password(dp: DataPlane) -> None:
    role = fresh("role")
    await dp.ensure_role(role, "first-Password-1")
    query = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
    verifier = await scalar(dp, "postgres", query)
    assert str(verifier).startswith("SCRAM-SHA-256$")
    await dp.ensure_role(role, "first-Password-1")
    assert await scalar(dp, "postgres", query) == verifier
    await dp.ensure_role(role, "second-Password-2")
    assert await scalar(dp, "postgres", query) != verifier
    assert await scalar(dp, "postgres", f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")


async def test_child_is_a_snapshot_of_its_parent(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=3)
    child = fresh("child")
    await dp.create_database(child, owner=ROLE, template=parent)
    assert await dp.database_exists(child)
    assert child in await dp.list_databases()
    assert await scalar(dp, child, "SELECT count(*) FROM app.items") == 3
    await sql(dp, parent, "INSERT INTO app.items (note) VALUES ('later')")
    await sql(dp, child, "DELETE FROM app.items WHERE id = 1")
    assert await scalar(dp, child, "SELECT count(*) FROM app.items") == 2
    assert await scalar(dp, parent, "SELECT count(*) FROM app.items") == 4
    owner = await scalar(
        dp, "postgres", f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{child}'"
    )
    assert owner == ROLE


async def test_drop_ends_sessions_and_ignores_missing(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    try:
        conn = await client(address)
        await dp.drop_database(name)
        assert not await dp.database_exists(name)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        await dp.drop_database(name)  # already gone: no error
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_replace_database_restores_while_endpoint_stays_open(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=5)
    child = fresh("child")
    await dp.create_database(child, owner=ROLE, template=parent)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": child})
    try:
        conn = await client(address)
        await conn.execute("DELETE FROM app.items")
        await dp.replace_database(child, template=parent, owner=ROLE)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        again = await client(address)
        assert await again.fetchval("SELECT count(*) FROM app.items") == 5
        assert await again.fetchval("SELECT current_database()") == child
        await again.close()
        assert sorted(d for d in await dp.list_databases() if d.startswith(child)) == [child]
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_schema_only_keeps_schema_and_alembic_rows(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=7)
    child = fresh("schema_only")
    await dp.create_database(child, owner=ROLE, template=parent, schema_only=True)
    assert await scalar(dp, child, "SELECT count(*) FROM app.items") == 0
    assert await scalar(dp, child, "SELECT version_num FROM app.alembic_version") == "abc123"
    await sql(dp, child, "INSERT INTO app.items (note) VALUES ('first')")
    assert await scalar(dp, child, "SELECT max(id) FROM app.items") == 1  # identity restarted
    assert await scalar(dp, parent, "SELECT count(*) FROM app.items") == 7


async def test_copy_errors_are_one_line_and_point_at_the_log(dp: DataPlane) -> None:
    with pytest.raises(LocalServerError) as info:
        await dp.create_database(fresh("child"), owner=ROLE, template="no_such_parent")
    message = str(info.value)
    assert "\n" not in message
    assert "no_such_parent" in message
    assert str(dp.log_path) in message


# --- endpoints -----------------------------------------------------------------------


async def test_same_logical_name_reaches_each_branch(dp: DataPlane) -> None:
    first, second = await parent_with_rows(dp, rows=1), await parent_with_rows(dp, rows=2)
    a = await dp.open_endpoint(fresh("ep"), databases={"cathouse": first})
    b = await dp.open_endpoint(fresh("ep"), databases={"cathouse": second})
    try:
        assert a.tls == b.tls
        for address, physical, rows in ((a, first, 1), (b, second, 2)):
            for pooled in (False, True):
                conn = await client(address, pooled=pooled)
                try:
                    assert await conn.fetchval("SELECT current_database()") == physical
                    assert await conn.fetchval("SELECT count(*) FROM app.items") == rows
                    if address.tls:
                        assert conn.get_server_version()  # TLS handshake happened above
                finally:
                    await conn.close()
    finally:
        await dp.close_endpoint(a.endpoint_id)
        await dp.close_endpoint(b.endpoint_id)


async def test_tls_verifies_against_the_generated_certificate(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    try:
        if not address.tls:
            pytest.skip("the cryptography package is not available")
        assert address.ca_file is not None and dp.ca_file is not None
        # Verifying against the home's CA, host name included, proves the proxy spoke TLS
        # with the certificate that CA signed for 127.0.0.1.
        context = ssl.create_default_context(cafile=address.ca_file)
        for pooled in (False, True):
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=address.pooled_port if pooled else address.direct_port,
                user=ROLE,
                password=PASSWORD,
                database="cathouse",
                ssl=context,
                statement_cache_size=0,
            )
            assert await conn.fetchval("SELECT current_database()") == name
            await conn.close()
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_psql_connects_with_sslmode_require(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no system psql (the wheel's psql is built without SSL)")
    try:
        sslmode = "require" if address.tls else "disable"
        url = f"postgresql://{ROLE}@127.0.0.1:{address.direct_port}/cathouse?sslmode={sslmode}"
        process = await asyncio.create_subprocess_exec(
            psql,
            url,
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_database()",
            "-c",
            "\\conninfo",
            env={"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        text = out.decode()
        assert text.splitlines()[0] == name
        if address.tls:
            assert "SSL" in text and "TLS" in text
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_unknown_logical_database_and_bad_password(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    try:
        for pooled in (False, True):
            with pytest.raises(asyncpg.InvalidCatalogNameError, match='database "elsewhere"'):
                await client(address, pooled=pooled, database="elsewhere")
            # PostgreSQL says 28P01; PgBouncer 1.18 reports its SASL failure as 08P01.
            with pytest.raises(asyncpg.PostgresError, match="authentication failed"):
                await client(address, pooled=pooled, password="wrong-password-123")
        # The physical name is not an alias: only the mapped logical names are served.
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await client(address, database=name)
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_cancel_requests_are_forwarded(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    try:
        for pooled in (False, True):
            conn = await client(address, pooled=pooled)
            # asyncpg sends a CancelRequest on a new connection when the timeout hits; if
            # the proxy dropped it the sleep would run on and the next query would wait.
            with pytest.raises(TimeoutError):
                await conn.execute("SELECT pg_sleep(30)", timeout=0.2)
            assert await conn.fetchval("SELECT 1", timeout=5) == 1
            await conn.close()
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_given_ports_are_rebound_or_replaced(dp: DataPlane) -> None:
    name = await parent_with_rows(dp)
    endpoint = fresh("ep")
    first = await dp.open_endpoint(endpoint, databases={"cathouse": name})
    await dp.close_endpoint(endpoint)
    again = await dp.open_endpoint(
        endpoint,
        databases={"cathouse": name},
        direct_port=first.direct_port,
        pooled_port=first.pooled_port,
    )
    try:
        assert (again.direct_port, again.pooled_port) == (first.direct_port, first.pooled_port)
        conn = await client(again)
        await conn.close()
        # Ports taken by a live endpoint: another endpoint gets fresh ones.
        other = await dp.open_endpoint(
            fresh("ep"),
            databases={"cathouse": name},
            direct_port=again.direct_port,
            pooled_port=again.pooled_port,
        )
        assert other.direct_port not in (again.direct_port, again.pooled_port)
        assert other.pooled_port not in (again.direct_port, again.pooled_port)
        await dp.close_endpoint(other.endpoint_id)
    finally:
        await dp.close_endpoint(endpoint)
    with pytest.raises(OSError):
        await client(again)


async def test_pooled_path_goes_through_pgbouncer(dp: DataPlane) -> None:
    if find_pgbouncer() is None:
        pytest.skip("pgbouncer is not installed")
    assert dp.pgbouncer_available, dp.pgbouncer_problem
    name = await parent_with_rows(dp)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": name})
    try:
        assert address.pooled_via_pgbouncer
        # Transaction pooling: consecutive clients share one server connection, while
        # every direct client gets its own backend.
        pids = []
        for _ in range(3):
            conn = await client(address, pooled=True)
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.close()
        assert len(set(pids)) == 1
        direct = []
        for _ in range(2):
            conn = await client(address)
            direct.append(await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.close()
        assert len(set(direct)) == 2
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_pooled_path_without_pgbouncer_still_differs(dp: DataPlane) -> None:
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": await parent_with_rows(dp)})
    try:
        assert address.pooled_port != address.direct_port
        assert address.pooled_via_pgbouncer == dp.pgbouncer_available
    finally:
        await dp.close_endpoint(address.endpoint_id)


# --- the fence -----------------------------------------------------------------------


async def _writer(address: EndpointAddress, pooled: bool, stop: asyncio.Event, done: list[int]) -> None:
    """Insert 100 rows per transaction until told to stop, reconnecting when cut off."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await client(address, pooled=pooled)
            async with conn.transaction():
                for _ in range(100):
                    await conn.execute("INSERT INTO app.items (note) VALUES ('w')")
            done.append(100)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            if conn is not None:
                conn.terminate()
            conn = None
            await asyncio.sleep(0.01)
    if conn is not None:
        await conn.close()


async def test_forks_under_a_writer_are_consistent_snapshots(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=0)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": parent})
    stop = asyncio.Event()
    committed: list[int] = []
    writers = [asyncio.create_task(_writer(address, pooled, stop, committed)) for pooled in (False, True)]
    children = []
    try:
        while len(committed) < 2:
            await asyncio.sleep(0.01)
        for _ in range(6):
            child = fresh("fork")
            await dp.create_database(child, owner=ROLE, template=parent)
            children.append(child)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await dp.close_endpoint(address.endpoint_id)
    counts = [await scalar(dp, child, "SELECT count(*) FROM app.items") for child in children]
    assert all(isinstance(n, int) and n % 100 == 0 for n in counts), counts
    assert counts == sorted(counts) and counts[-1] > 0, counts
    parent_count = await scalar(dp, parent, "SELECT count(*) FROM app.items")
    assert parent_count == sum(committed)


async def test_open_transaction_during_copy_never_reaches_the_child(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=0)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": parent})
    try:
        conn = await client(address)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO app.items (note) SELECT 'open' FROM generate_series(1, 1000)")
        child = fresh("fork")
        await dp.create_database(child, owner=ROLE, template=parent)
        # The fence ended the session that kept its transaction open past the timeout.
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await tx.commit()
        conn.terminate()
        assert await scalar(dp, child, "SELECT count(*) FROM app.items") == 0
        assert await scalar(dp, parent, "SELECT count(*) FROM app.items") == 0
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_fence_lets_open_transactions_finish_and_holds_new_connections(dp: DataPlane) -> None:
    parent = await parent_with_rows(dp, rows=2)
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": parent})
    dp.fence_timeout = 30.0  # the test, not the clock, ends the open transaction
    try:
        blocker = await client(address)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO app.items (note) VALUES ('committed during the fence')")
        child = fresh("fork")
        fork = asyncio.create_task(dp.create_database(child, owner=ROLE, template=parent))
        late = [asyncio.create_task(client(address, pooled=pooled)) for pooled in (False, True)]
        await asyncio.sleep(0.2)
        assert not fork.done()  # waiting for `blocker` to finish its transaction
        assert not any(task.done() for task in late)  # held, not refused
        await tx.commit()  # an open transaction may finish: it belongs to the snapshot
        await fork
        for task in late:
            conn = await task
            assert await conn.fetchval("SELECT count(*) FROM app.items") == 3
            await conn.close()
        assert await scalar(dp, child, "SELECT count(*) FROM app.items") == 3
        blocker.terminate()
    finally:
        dp.fence_timeout = FENCE_TIMEOUT
        await dp.close_endpoint(address.endpoint_id)


async def test_a_client_of_a_database_still_being_copied_waits_for_it(dp: DataPlane) -> None:
    """A branch's endpoint listens before its copy is made (the create answers first, as
    Neon's does while the compute starts), and Neon's create-branch-action hands its
    `db_url` to the next step at once: a client that connects then waits for the copy
    instead of finding no database (#25)."""
    parent = await parent_with_rows(dp, rows=2)
    parent_ep = await dp.open_endpoint(fresh("ep"), databases={"cathouse": parent})
    child = fresh("fork")
    child_ep = await dp.open_endpoint(fresh("ep"), databases={"cathouse": child})
    dp.fence_timeout = 30.0  # the test, not the clock, ends the transaction holding the copy
    try:
        blocker = await client(parent_ep)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO app.items (note) VALUES ('committed during the copy')")
        fork = asyncio.create_task(dp.create_database(child, owner=ROLE, template=parent))
        early = asyncio.create_task(client(child_ep))
        await asyncio.sleep(0.2)
        assert not fork.done()  # the copy waits for `blocker`'s transaction
        assert not early.done(), early.exception()  # held, not "database does not exist"
        await tx.commit()
        await fork
        conn = await early
        assert await conn.fetchval("SELECT count(*) FROM app.items") == 3
        await conn.close()
        blocker.terminate()
    finally:
        dp.fence_timeout = FENCE_TIMEOUT
        await dp.close_endpoint(child_ep.endpoint_id)
        await dp.close_endpoint(parent_ep.endpoint_id)


async def test_no_password_reaches_the_postgres_log(dp: DataPlane) -> None:
    assert dp.log_path is not None
    assert PASSWORD not in dp.log_path.read_text()


# --- the pooler's mode -----------------------------------------------------------------


async def _prepare_twice(address: EndpointAddress) -> None:
    """Two clients one after the other prepare a statement under the same name, through
    the pooled endpoint: psycopg 3 names a connection's first one `_pg3_0`."""
    for _ in range(2):
        async with await psycopg.AsyncConnection.connect(
            host=address.host, port=address.pooled_port, user=ROLE, password=PASSWORD,
            dbname="cathouse", sslmode="require" if address.tls else "disable",
            autocommit=True, connect_timeout=10,
        ) as conn:
            cursor = await conn.execute("SELECT 1 + %s", [1], prepare=True)
            assert await cursor.fetchone() == (2,)


async def test_prepared_statements_are_what_the_pooler_says(dp: DataPlane) -> None:
    """The capability `pooler_info` publishes (and the plugin's hint relies on) is what a
    client finds: named statements of two clients collide exactly when it says so."""
    if find_pgbouncer() is None:
        pytest.skip("prepared statements through the pooler need pgbouncer, which is not installed")
    info = dp.pooler_info()
    assert info is not None and info["mode"] == "transaction"
    address = await dp.open_endpoint(fresh("ep"), databases={"cathouse": await parent_with_rows(dp)})
    try:
        if info["prepared_statements"]:
            await _prepare_twice(address)
        else:
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
                await _prepare_twice(address)
    finally:
        await dp.close_endpoint(address.endpoint_id)


async def test_session_mode_carries_prepared_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if find_pgbouncer() is None:
        pytest.skip("a pool mode needs pgbouncer, which is not installed")
    monkeypatch.setenv("CATHOUSE_POOLER_MODE", "session")
    plane = DataPlane(tmp_path / "home", storage="memory")
    with _cleanup(plane):
        await plane.start()
        try:
            await plane.ensure_role(ROLE, PASSWORD)
            assert plane.pooler_info() == {
                "mode": "session", "version": plane.pooler_info()["version"], "prepared_statements": True,
            }
            address = await plane.open_endpoint(
                fresh("ep"), databases={"cathouse": await parent_with_rows(plane)}
            )
            await _prepare_twice(address)
            await plane.close_endpoint(address.endpoint_id)
        finally:
            await plane.stop()
