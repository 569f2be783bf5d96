"""#15 part 1 (direct half): a URL built from an endpoint's `host` alone connects.

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
