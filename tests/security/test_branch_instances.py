"""#24's findings 1, 3, 4 and 7, through the handed-out URLs, on the instance data plane
(`CATHOUSE_LOCAL_COMPUTE=instance`: a PostgreSQL per branch behind the byte relay).

Each test fails on the shared plane (one PostgreSQL, one owner role for every branch),
where it was reproduced: there `SHOW port` names PostgreSQL's own loopback port and a
password set in SQL opens it, the proxy logs in upstream for every bare startup, and
one role sees and ends every branch's sessions and carries its options to all of them,
and a read-only endpoint's sessions are read-only only until they say otherwise.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import psycopg.sql
import pytest

from tests.local._server import api_client, default_branch, start_test_server, wait_operations

ROLE = "cathouse_owner"
DATABASE = "cathouse"
_SSL_REQUEST = struct.pack("!II", 8, 80877103)


@dataclass(frozen=True)
class Branches:
    a: str  # the default branch's URL
    b: str  # a child's URL
    reader: str  # the URL of a read-only endpoint of the default branch


@pytest.fixture(scope="module")
def branches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Branches]:
    home = tmp_path_factory.mktemp("instances-home")
    home.chmod(0o700)
    before = os.environ.get("CATHOUSE_LOCAL_COMPUTE")
    os.environ["CATHOUSE_LOCAL_COMPUTE"] = "instance"
    try:
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
            yield Branches(a, b, reader)
    finally:
        if before is None:
            os.environ.pop("CATHOUSE_LOCAL_COMPUTE", None)
        else:
            os.environ["CATHOUSE_LOCAL_COMPUTE"] = before


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
