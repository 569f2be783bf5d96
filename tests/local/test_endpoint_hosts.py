"""#15 part 1: URLs built from an endpoint's `host` and `pooler_host` alone connect.

Neon's clients take `host` (or `connection_parameters.pooler_host`), the default port
5432 and `sslmode=require`; each endpoint here has two loopback addresses of its own
(127.0.0.0/8) listening on 5432, direct and pooled, so those URLs reach the endpoint's
branch, the pooled one through PgBouncer, and verify-full against the home's CA holds
for both addresses. (Where the machine cannot bind such addresses, `host` stays
127.0.0.1 and these tests are skipped: the server said so at start.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import psycopg
import pytest
from cathouse_harness.neon.models import ConnectionInfo

from tests._pgbouncer import pooled_backends
from tests.local._server import connection_uri, create_ready_branch, delete_branch, sql, unique


def _machine_can() -> bool:
    """Whether a loopback address beyond 127.0.0.1 can listen on 5432 here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.7", 5432))
        except OSError:
            return False
    return True


def _own_host(endpoint: dict[str, Any]) -> str:
    host = str(endpoint["host"])
    address = ipaddress.ip_address(host)  # a name would not be an address of its own
    assert address.is_loopback and host != "127.0.0.1", host
    return host


def test_a_url_built_from_host_alone_reaches_that_branch(client: httpx.Client, project: str) -> None:
    if not _machine_can():
        pytest.skip("no loopback address beyond 127.0.0.1 can listen on 5432 here")
    made = [create_ready_branch(client, project, name=unique("host")) for _ in range(2)]
    hosts = []
    for branch in made:
        [endpoint] = branch["endpoints"]
        host = _own_host(endpoint)
        hosts.append(host)
        params = branch["connection_uris"][0]["connection_parameters"]
        assert params["host"] == host
        # as a Neon client builds it: host, default port, the role and database it was given
        built = (
            f"postgresql://{params['role']}:{params['password']}@{host}/{params['database']}"
            "?sslmode=require"
        )
        handed_out = connection_uri(client, project, branch["branch"]["id"], pooled=False)
        [[via_host]] = sql(built, "SELECT current_database()")
        [[via_uri]] = sql(handed_out, "SELECT current_database()")
        assert via_host == via_uri
    assert hosts[0] != hosts[1]
    for branch in made:
        delete_branch(client, project, branch["branch"]["id"])


def _backend_pids_psycopg(url: str, times: int) -> set[int]:
    pids = set()
    for _ in range(times):
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pids.add(int(row[0]))
    return pids


async def _backend_pids_asyncpg(url: str, times: int) -> set[int]:
    pids = set()
    for _ in range(times):
        # statement_cache_size=0: the pooled URL goes through PgBouncer in transaction mode
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            pids.add(int(await conn.fetchval("SELECT pg_backend_pid()")))
        finally:
            await conn.close()
    return pids


def test_urls_built_from_host_and_pooler_host_verify_full(client: httpx.Client, project: str) -> None:
    """As a Neon client builds them (host or pooler_host, default port), with
    `sslmode=verify-full` and the home's CA, through psycopg (libpq) and asyncpg: the
    certificate names both addresses; the direct URL reaches the branch (a backend per
    client), the pooled one PgBouncer (consecutive clients share its one server
    connection). No endpoint object names a port."""
    if not _machine_can():
        pytest.skip("no loopback address beyond 127.0.0.1 can listen on 5432 here")
    made = create_ready_branch(client, project, name=unique("pooler-host"))
    try:
        [endpoint] = made["endpoints"]
        listed = client.get(f"/projects/{project}/branches/{made['branch']['id']}/endpoints").json()
        for ep in (endpoint, *listed["endpoints"]):
            assert not {"port", "pooler_port"} & set(ep), ep
        entry = made["connection_uris"][0]
        params = entry["connection_parameters"]
        host, pooler_host = _own_host(endpoint), params["pooler_host"]
        assert params["host"] == host and pooler_host not in (host, "127.0.0.1")
        assert ipaddress.ip_address(pooler_host).is_loopback
        handed_out = urlsplit(entry["connection_uri"])
        assert (handed_out.hostname, handed_out.port) == (host, None)
        [ca_file] = parse_qs(handed_out.query)["sslrootcert"]
        credentials = f"{params['role']}:{params['password']}"
        query = f"sslmode=verify-full&sslrootcert={ca_file}"
        direct = f"postgresql://{credentials}@{host}/{params['database']}?{query}"
        pooled = f"postgresql://{credentials}@{pooler_host}/{params['database']}?{query}"
        assert len(_backend_pids_psycopg(direct, 2)) == 2
        assert len(_backend_pids_psycopg(pooled, 3)) == pooled_backends(3)
        assert len(asyncio.run(_backend_pids_asyncpg(direct, 2))) == 2
        assert len(asyncio.run(_backend_pids_asyncpg(pooled, 3))) == pooled_backends(3)
        [[database]] = sql(pooled, "SELECT current_database()")
        [[expected]] = sql(direct, "SELECT current_database()")
        assert database == expected
        # our own client builds the same pooled URL from the answer, with no port
        built = ConnectionInfo.from_api(entry).pooled_uri
        assert built is not None
        asked = connection_uri(client, project, made["branch"]["id"], pooled=True)
        assert urlsplit(built.reveal()).netloc == urlsplit(asked).netloc
        assert urlsplit(asked).hostname == pooler_host
    finally:
        delete_branch(client, project, made["branch"]["id"])
