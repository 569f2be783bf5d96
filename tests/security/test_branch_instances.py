"""#24's findings 1 to 7, through the handed-out URLs, on the data plane of today (a
PostgreSQL per branch behind the byte relay).

Each test fails on the shared plane (one PostgreSQL, one owner role for every branch),
where it was reproduced: there `SHOW port` names PostgreSQL's own loopback port and a
password set in SQL opens it, the proxy logs in upstream for every bare startup, one
role sees and ends every branch's sessions and carries its options to all of them,
every branch's physical database is in reach of a statement the interception misreads,
every home's PostgreSQL runs as one OS user, a Query message is held whole, and an
unauthenticated startup makes a branch's lazy database. (The read-only endpoint half of
finding 7 is tested with the standby endpoints.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import psycopg.sql
import pytest
from cathouse_harness.local.data.proxy_auth import read_message
from cathouse_harness.local.server import LocalServerInfo

from tests.local._server import api_client, default_branch, start_test_server, wait_operations
from tests.security._support import needs_root
from tests.security._wire import open_session, tls_startup

ROLE = "cathouse_owner"
DATABASE = "cathouse"
_SSL_REQUEST = struct.pack("!II", 8, 80877103)


@dataclass(frozen=True)
class Branches:
    a: str  # the default branch's URL
    b: str  # a child's URL
    info: LocalServerInfo
    a_id: str  # the default branch's id
    reader: str  # the URL of a read-only endpoint of the default branch


@pytest.fixture(scope="module")
def branches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Branches]:
    home = tmp_path_factory.mktemp("instances-home")
    home.chmod(0o700)
    with start_test_server(home) as info:
        client = api_client(info)
        project = info.project_id
        a = client.get(f"/projects/{project}/connection_uri",
                       params={"database_name": DATABASE, "role_name": ROLE}).json()["uri"]
        with psycopg.connect(a, autocommit=True) as session:
            session.execute("CREATE TABLE secrets (v text)")
            session.execute("INSERT INTO secrets VALUES ('of the parent')")
        made = client.post(f"/projects/{project}/branches",
                           json={"endpoints": [{"type": "read_write"}]}).json()
        wait_operations(client, project, made["operations"])
        b = made["connection_uris"][0]["connection_uri"]
        with psycopg.connect(b, autocommit=True) as session:
            session.execute("INSERT INTO secrets VALUES ('of the child only')")
        main = default_branch(client, project)["id"]
        ro = client.post(f"/projects/{project}/endpoints",
                         json={"endpoint": {"branch_id": main, "type": "read_only"}}).json()
        wait_operations(client, project, ro["operations"])
        reader = client.get(f"/projects/{project}/connection_uri", params={
            "branch_id": main, "endpoint_id": ro["endpoint"]["id"], "database_name": DATABASE,
            "role_name": ROLE}).json()["uri"]
        yield Branches(a, b, info, main, reader)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _refused(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(url, connect_timeout=10).close()
    return str(caught.value)


def test_a_password_set_in_sql_opens_nothing_of_another_branch(branches: Branches) -> None:
    """Finding 1: ALTER ROLE CURRENT_USER PASSWORD, SHOW port, then log in elsewhere."""
    with psycopg.connect(branches.a, autocommit=True) as session:
        session.execute("ALTER ROLE CURRENT_USER PASSWORD 'chosen-in-sql'")
        port = int(session.execute("SHOW port").fetchone()[0])  # type: ignore[index]
    # B's endpoint: B's pg_authid never heard of that password
    assert "password authentication failed" in _refused(_with_password(branches.b, "chosen-in-sql"))
    # the port PostgreSQL reports: nobody's listener there lets that password in
    direct = f"postgresql://{ROLE}:chosen-in-sql@127.0.0.1:{port}/{DATABASE}?sslmode=disable"
    _refused(direct)
    # every branch's own URL still works (the shared plane's internal password broke them all)
    with psycopg.connect(branches.b) as session:
        rows = session.execute("SELECT v FROM secrets ORDER BY v").fetchall()
    assert rows == [("of the child only",), ("of the parent",)]
    with psycopg.connect(_with_password(branches.a, "chosen-in-sql"), autocommit=True) as session:
        assert session.execute("SELECT count(*) FROM secrets").fetchone() == (1,)
        # the other tests of this module log in with the handed-out password again
        original = unquote(urlsplit(branches.a).password or "")
        session.execute(psycopg.sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
            psycopg.sql.Literal(original)))


def _open_bare_startup(url: str) -> socket.socket:
    """Through the URL's host, TLS (with its SNI) and a startup packet, no password;
    returned once the endpoint asked for one."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    raw = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=30)
    raw.sendall(_SSL_REQUEST)
    assert raw.recv(1) == b"S"
    context = ssl.create_default_context(cafile=unquote(query["sslrootcert"][0]))
    sock = context.wrap_socket(raw, server_hostname=parts.hostname)
    params = f"user\0{ROLE}\0database\0{DATABASE}\0\0".encode()
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    head = sock.recv(5)
    assert head[:1] == b"R", head  # an authentication request: the endpoint waits for a proof
    return sock


def test_bare_startup_packets_open_nothing_upstream(branches: Branches) -> None:
    """Finding 3: more unauthenticated startups than the instance has connection slots."""
    held = [_open_bare_startup(branches.a) for _ in range(50)]
    try:
        with psycopg.connect(branches.a) as session:
            backends = session.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
        assert backends == (1,)  # this session: none for the 50 waiting for a password
    finally:
        for sock in held:
            sock.close()


def test_sessions_and_role_options_stay_on_their_branch(branches: Branches) -> None:
    """Finding 4: pg_stat_activity, pg_terminate_backend, ALTER ROLE … SET."""
    with psycopg.connect(branches.b) as b_session, psycopg.connect(branches.a, autocommit=True) as a_session:
        b_pid = b_session.execute("SELECT pg_backend_pid(), 'b-secret-marker'").fetchone()[0]  # type: ignore[index]
        queries = [q for (q,) in a_session.execute("SELECT query FROM pg_stat_activity").fetchall()]
        assert not any("b-secret-marker" in (q or "") for q in queries)
        a_session.execute("SELECT pg_terminate_backend(%s)", (b_pid,))
        assert b_session.execute("SELECT 1").fetchone() == (1,)  # still alive
        a_session.execute("ALTER ROLE CURRENT_USER SET default_transaction_read_only = on")
        try:
            with psycopg.connect(branches.b, autocommit=True) as fresh:
                assert fresh.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
                fresh.execute("INSERT INTO secrets VALUES ('written')")
                assert fresh.execute("SELECT current_database()").fetchone() == (DATABASE,)
        finally:
            a_session.execute("ALTER ROLE CURRENT_USER RESET default_transaction_read_only")
        assert a_session.execute("SELECT current_database()").fetchone() == (DATABASE,)


def test_unknown_role_and_database_answer_as_a_wrong_password(branches: Branches) -> None:
    """Before any password, an endpoint says nothing of which roles and databases exist."""
    wrong = _refused(_with_password(branches.a, "not-the-password"))
    parts = urlsplit(branches.a)
    no_role = _refused(parts._replace(netloc=f"nobody:x@{parts.hostname}").geturl())
    no_database = _refused(_with_password(branches.a, "x").replace(f"/{DATABASE}?", "/nowhere?"))
    assert 'password authentication failed for user "cathouse_owner"' in wrong
    assert 'password authentication failed for user "nobody"' in no_role
    assert 'password authentication failed for user "cathouse_owner"' in no_database



# --------------------------------------------------------------------- finding 2

_OWN_DATABASES = {DATABASE, "postgres", "template0", "template1"}


def test_statements_the_old_interception_misread_stay_in_their_branch(branches: Branches) -> None:
    """Finding 2: `-- x\\rCREATE DATABASE`, a backslash in a standard string, DO/EXECUTE
    ALTER DATABASE … RENAME. They are PostgreSQL's own here, run inside A's instance:
    no other branch's database is there to name, copy, swap or drop."""
    with psycopg.connect(branches.b) as b_session:
        b_before = {n for (n,) in b_session.execute("SELECT datname FROM pg_database").fetchall()}
    with psycopg.connect(branches.a, autocommit=True, cursor_factory=psycopg.ClientCursor) as a:
        seen = {n for (n,) in a.execute("SELECT datname FROM pg_database").fetchall()}
        assert seen == _OWN_DATABASES  # the shared plane lists every branch's br_… here
        a.execute("-- x\rCREATE DATABASE lexer_cr")  # a -- comment ends at CR for PostgreSQL
        a.execute("SELECT '\\'; ALTER DATABASE lexer_cr RENAME TO lexer_bs; -- '")
        a.execute("DO $$ BEGIN EXECUTE 'ALTER DATABASE lexer_bs RENAME TO lexer_do'; END $$")
        after = {n for (n,) in a.execute("SELECT datname FROM pg_database").fetchall()}
        assert after == _OWN_DATABASES | {"lexer_do"}
        # what is left to drop is the instance's own, which the branch's role does not own
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute("DROP DATABASE postgres")
        a.execute("DROP DATABASE lexer_do")
    with psycopg.connect(branches.b) as b_session:
        assert {n for (n,) in b_session.execute("SELECT datname FROM pg_database").fetchall()} == b_before
        rows = set(b_session.execute("SELECT v FROM secrets").fetchall())
    assert {("of the child only",), ("of the parent",)} <= rows


# --------------------------------------------------------------------- finding 5


@pytest.mark.parametrize("name", ["postgres", "neon_superuser", "pg_monitor"])
def test_cluster_role_names_are_refused_by_the_api(branches: Branches, name: str) -> None:
    """Finding 5: `POST …/roles {"name": "postgres"}` handed out a superuser's password."""
    client = api_client(branches.info)
    roles = f"/projects/{branches.info.project_id}/branches/{branches.a_id}/roles"
    answer = client.post(roles, json={"role": {"name": name}})
    assert answer.status_code == 400, answer.text
    assert "reserved" in answer.json()["message"]
    assert client.get(f"{roles}/{name}/reveal_password").status_code == 404
    assert client.get(f"/projects/{branches.info.project_id}/connection_uri",
                      params={"database_name": DATABASE, "role_name": name}).status_code == 404


def test_no_role_the_api_hands_out_is_a_superuser(branches: Branches) -> None:
    """Finding 5: every role's handed-out URL opens an ordinary session, and COPY FROM
    PROGRAM (a shell as the instance's OS user) is refused."""
    client = api_client(branches.info)
    project = branches.info.project_id
    listed = client.get(f"/projects/{project}/branches/{branches.a_id}/roles").json()["roles"]
    names = [role["name"] for role in listed]
    assert names
    for name in names:
        url = client.get(f"/projects/{project}/connection_uri",
                         params={"database_name": DATABASE, "role_name": name}).json()["uri"]
        with psycopg.connect(url, autocommit=True) as session:
            row = session.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            assert row == (False,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                session.execute("COPY secrets FROM PROGRAM 'id'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                session.execute("CREATE ROLE would_be_super SUPERUSER")


def _instance_of(url: str) -> tuple[int, str]:
    """The OS user (uid) running the URL's session, and its data directory (the
    backend's working directory), read from /proc through the session's own pid."""
    with psycopg.connect(url) as session:
        pid = session.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        status = Path(f"/proc/{pid}/status").read_text()
        data = os.readlink(f"/proc/{pid}/cwd")
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    return uid, data


def _can_list_as(uid: int, directory: str) -> bool:
    probe = subprocess.run(  # ls: the test's own python may be out of that user's reach
        [shutil.which("ls") or "/bin/ls", directory],
        user=uid, capture_output=True, check=False, timeout=60, cwd="/",
    )
    return probe.returncode == 0


@needs_root
def test_instances_of_two_homes_run_as_users_that_cannot_read_each_other(
    branches: Branches, tmp_path: Path
) -> None:
    """Finding 5: the shared plane ran every root-run home's PostgreSQL as `cathouse-pg`,
    so one home's server program could read another home's data directory."""
    second = tmp_path / "second-home"
    second.mkdir(mode=0o700)
    with start_test_server(second) as info:
        other = api_client(info).get(f"/projects/{info.project_id}/connection_uri",
                                     params={"database_name": DATABASE, "role_name": ROLE}).json()["uri"]
        uid_a, data_a = _instance_of(branches.a)
        uid_b, data_b = _instance_of(other)
        assert 0 not in (uid_a, uid_b)
        assert uid_a != uid_b
        assert _can_list_as(uid_a, data_a) and _can_list_as(uid_b, data_b)  # the probe works
        assert not _can_list_as(uid_a, data_b)
        assert not _can_list_as(uid_b, data_a)


# --------------------------------------------------------------------- finding 6

_HUGE = 128 * 1024 * 1024
_SENT_FIRST = 96 * 1024 * 1024
_CHUNK = b"x" * (1024 * 1024)


def _rss_bytes() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _select_one(url: str) -> tuple[int, ...] | None:
    with psycopg.connect(url, connect_timeout=30) as session:
        return session.execute("SELECT 1").fetchone()


def test_a_huge_query_message_is_never_held_whole(branches: Branches) -> None:
    """Finding 6: a 128 MiB Query message (a comment PostgreSQL skips), held at 96 MiB
    sent: the relay (this process: the test server runs in it) holds fixed chunks, not
    the message, and another branch connects and queries meanwhile. The shared plane
    held the message whole and copied it again on every read."""

    async def flood() -> tuple[int, tuple[int, ...] | None, list[tuple[bytes, bytes]]]:
        session = await open_session(branches.a)
        try:
            before = _rss_bytes()
            text_length = _HUGE - 4 - 1  # the message's length counts itself and the NUL
            head = b"SELECT 1 /*"
            tail = b"*/"
            filler = text_length - len(head) - len(tail)
            session.writer.write(b"Q" + struct.pack("!I", _HUGE) + head)
            sent = 0
            while sent < _SENT_FIRST:
                session.writer.write(_CHUNK)
                await session.writer.drain()
                sent += len(_CHUNK)
            grown = _rss_bytes() - before
            other = await asyncio.to_thread(_select_one, branches.b)
            while sent < filler:
                piece = _CHUNK[: min(len(_CHUNK), filler - sent)]
                session.writer.write(piece)
                await session.writer.drain()
                sent += len(piece)
            session.writer.write(tail + b"\0")
            await session.writer.drain()
            return grown, other, await session.until_ready()
        finally:
            session.close()

    grown, other, answer = asyncio.run(flood())
    assert other == (1,)
    assert grown < 32 * 1024 * 1024, f"the server grew by {grown >> 20} MiB while 96 MiB were sent"
    kinds = [kind for kind, _ in answer]
    assert b"E" not in kinds and b"D" in kinds  # PostgreSQL read it all and answered 1


def test_a_huge_message_before_authentication_is_refused_unread(branches: Branches) -> None:
    """Finding 6, before the login: a SASL response that says it is 200 MiB long ends
    the connection at its header; nothing waits for (or holds) its body."""

    async def claim() -> bytes:
        reader, writer = await tls_startup(branches.a)
        try:
            kind, _ = await read_message(reader)
            assert kind == b"R"
            writer.write(b"p" + struct.pack("!I", 200 * 1024 * 1024) + b"SCRAM-SHA-256\0")
            await writer.drain()
            async with asyncio.timeout(30):
                return await reader.read()  # the endpoint's last words, then its close
        finally:
            writer.close()

    answer = asyncio.run(claim())
    assert answer[:1] in (b"", b"E"), answer[:80]


# --------------------------------------------------------------------- finding 7


def _databases_and_roles(url: str) -> tuple[set[str], set[str]]:
    with psycopg.connect(url) as session:
        databases = {n for (n,) in session.execute("SELECT datname FROM pg_database").fetchall()}
        roles = {n for (n,) in session.execute("SELECT rolname FROM pg_roles").fetchall()}
    return databases, roles


def test_nothing_is_made_before_a_client_authenticates(branches: Branches) -> None:
    """Finding 7: on the shared plane a bare startup made a branch's not-yet-used
    database. A database the API made is there at once (as on Neon), and startups
    without a password, for it, for a database and for a role nobody made, change nothing."""
    client = api_client(branches.info)
    project = branches.info.project_id
    made = client.post(f"/projects/{project}/branches/{branches.a_id}/databases",
                       json={"database": {"name": "made_by_api", "owner_name": ROLE}}).json()
    wait_operations(client, project, made["operations"])
    before = _databases_and_roles(branches.a)
    parts = urlsplit(branches.a)

    async def knock(url: str) -> None:
        reader, writer = await tls_startup(url)
        try:
            kind, _ = await read_message(reader)
            assert kind == b"R"  # asked for a password, and given none
        finally:
            writer.close()

    for url in (branches.a.replace(f"/{DATABASE}?", "/made_by_api?"),
                branches.a.replace(f"/{DATABASE}?", "/never_made?"),
                parts._replace(netloc=f"never_made_role:x@{parts.hostname}").geturl()):
        asyncio.run(knock(url))
    assert _databases_and_roles(branches.a) == before
    assert "made_by_api" in before[0]


# --------------------------------------------------------------------- roles made in SQL


def test_a_role_made_in_sql_is_listed_by_the_api_from_the_next_sync(branches: Branches) -> None:
    """A session's CREATE ROLE reaches GET …/roles when the branch is next brought in line
    with its record (a login after an API change, or a fork): not at once. It logs in
    with the password set in SQL, which the API never overwrites."""
    client = api_client(branches.info)
    project = branches.info.project_id
    roles = f"/projects/{project}/branches/{branches.a_id}/roles"

    def listed() -> set[str]:
        return {role["name"] for role in client.get(roles).json()["roles"]}

    with psycopg.connect(branches.a, autocommit=True) as session:
        session.execute("CREATE ROLE made_in_sql LOGIN PASSWORD 'set-in-sql'")
    assert "made_in_sql" not in listed()  # not at once
    made = client.post(roles, json={"role": {"name": "made_by_api"}}).json()
    wait_operations(client, project, made["operations"])
    with psycopg.connect(branches.a) as session:  # the login that syncs the branch
        session.execute("SELECT 1")
    assert {"made_in_sql", "made_by_api"} <= listed()
    parts = urlsplit(branches.a)
    own = parts._replace(netloc=f"made_in_sql:set-in-sql@{parts.hostname}").geturl()
    with psycopg.connect(own) as session:
        assert session.execute("SELECT current_user").fetchone() == ("made_in_sql",)
    # a child forked now carries it, and lists it at once
    child = client.post(f"/projects/{project}/branches",
                        json={"branch": {"parent_id": branches.a_id}}).json()
    wait_operations(client, project, child["operations"])
    child_roles = client.get(f"/projects/{project}/branches/{child['branch']['id']}/roles").json()["roles"]
    assert "made_in_sql" in {role["name"] for role in child_roles}


# what a session may try on a read replica; each is refused by PostgreSQL itself
_WRITES = (
    "INSERT INTO secrets VALUES ('through a replica')",
    "CREATE TABLE through_a_replica (v int)",
    "ALTER ROLE CURRENT_USER PASSWORD 'through-a-replica'",
    "CREATE DATABASE through_a_replica",
)


def _refuses_every_write(session: psycopg.Connection) -> None:
    session.execute("SET default_transaction_read_only = off")
    with pytest.raises(psycopg.errors.FeatureNotSupported):  # "during recovery"
        session.execute("SET transaction_read_only = off")
    for statement in _WRITES:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute(statement)
    assert session.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_a_read_only_endpoint_refuses_writes_whatever_the_session_sets(branches: Branches) -> None:
    """Finding 7: `SET default_transaction_read_only = off`, then a write, through a
    read_only endpoint's URL: a hot standby of the branch refuses it, as a Neon read
    replica does. It shows the branch as of its copy, copied again for a later
    connection once the branch has changed (no WAL follows it meanwhile)."""
    with psycopg.connect(branches.reader, autocommit=True) as session:
        _refuses_every_write(session)
        assert ("of the parent",) in session.execute("SELECT v FROM secrets").fetchall()
        with psycopg.connect(branches.a, autocommit=True) as writer:
            writer.execute("INSERT INTO secrets VALUES ('after the copy')")
        # the open session keeps its copy
        assert ("after the copy",) not in session.execute("SELECT v FROM secrets").fetchall()
    try:
        with psycopg.connect(branches.reader, autocommit=True) as session:
            assert ("after the copy",) in session.execute("SELECT v FROM secrets").fetchall()
    finally:
        with psycopg.connect(branches.a, autocommit=True) as writer:
            writer.execute("DELETE FROM secrets WHERE v = 'after the copy'")
    with psycopg.connect(branches.a, autocommit=True) as session:  # nothing reached the branch
        assert session.execute("SELECT v FROM secrets").fetchall() == [("of the parent",)]
        assert session.execute(
            "SELECT count(*) FROM pg_database WHERE datname = 'through_a_replica'").fetchone() == (0,)


def test_a_time_travel_connection_refuses_writes_whatever_the_session_sets(branches: Branches) -> None:
    """Finding 7 for `options=neon_timestamp:…`: served by a standby as of the moment."""
    deadline = time.monotonic() + 10
    while True:  # until the server has seen the last writer leave (tests/local/test_history.py)
        stamp = datetime.now(UTC).isoformat()
        try:
            session = psycopg.connect(branches.a, options=f"neon_timestamp:{stamp}", autocommit=True)
            break
        except psycopg.OperationalError as exc:
            if "no kept state" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)
    with session:
        _refuses_every_write(session)
        assert session.execute("SELECT v FROM secrets").fetchall() == [("of the parent",)]
