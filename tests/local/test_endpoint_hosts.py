"""#15 part 1: a URL built from an endpoint's `host` alone connects, and one built from
`pooler_host` is pooled.

Neon's clients take `host`, the default port 5432 and `sslmode=require`; each endpoint
here has its own loopback address (127.0.0.0/8) listening on 5432, so that URL reaches
the endpoint's branch. (Where the machine cannot bind such an address, `host` stays
127.0.0.1 and this test is skipped: the server said so at start.)
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import Any

import httpx
import pytest

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


def test_a_url_built_from_pooler_host_goes_through_pgbouncer(client: httpx.Client, project: str) -> None:
    """Neon answers `pooler_host` beside `host`; a client building the pooled URL from it
    (default port) reaches that endpoint's PgBouncer: consecutive clients share one
    server connection, where direct clients each get their own backend."""
    from harness.local.pgbouncer import find_pgbouncer

    if not _machine_can():
        pytest.skip("no loopback address beyond 127.0.0.1 can listen on 5432 here")
    if find_pgbouncer() is None:
        pytest.skip("pgbouncer is not installed: the pooled listener is PostgreSQL itself")
    branch = create_ready_branch(client, project, name=unique("pooler-host"))
    try:
        [endpoint] = branch["endpoints"]
        params = branch["connection_uris"][0]["connection_parameters"]
        pooler_host = params["pooler_host"]
        assert pooler_host not in (_own_host(endpoint), "127.0.0.1"), pooler_host
        assert ipaddress.ip_address(pooler_host).is_loopback
        credentials = f"{params['role']}:{params['password']}"
        pooled = f"postgresql://{credentials}@{pooler_host}/{params['database']}?sslmode=require"
        direct = f"postgresql://{credentials}@{endpoint['host']}/{params['database']}?sslmode=require"
        pooled_pids = {sql(pooled, "SELECT pg_backend_pid()")[0][0] for _ in range(3)}
        direct_pids = {sql(direct, "SELECT pg_backend_pid()")[0][0] for _ in range(2)}
        assert len(pooled_pids) == 1, pooled_pids
        assert len(direct_pids) == 2, direct_pids
        [[database]] = sql(pooled, "SELECT current_database()")
        [[expected]] = sql(direct, "SELECT current_database()")
        assert database == expected
    finally:
        delete_branch(client, project, branch["branch"]["id"])
