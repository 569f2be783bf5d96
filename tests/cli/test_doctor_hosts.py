"""`cathouse-branch doctor` says, in one line, when URLs built from an endpoint's `host`
cannot connect on this machine: port 5432 is really taken on the endpoint's own loopback
addresses before the server opens it."""

from __future__ import annotations

import errno
import secrets
import socket
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cathouse_harness.local.control import ids
from cathouse_harness.local.data.hosts import DEFAULT_PORT, loopback_addresses
from cathouse_harness.local.server import LocalServerInfo, publish

from tests.cli._support import cli
from tests.local._server import api_client, connection_uri, sql, start_test_server
from tests.plugin._support import copy_example


def _occupy(addresses: Iterable[str], stack: ExitStack) -> None:
    """Listen on 5432 at each address first, as another PostgreSQL would."""
    for address in addresses:
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            sock.bind((address, DEFAULT_PORT))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # taken already: just as good
                continue
            if exc.errno == errno.EADDRNOTAVAIL:  # only 127.0.0.1 here: the server cannot either
                return
            raise
        sock.listen(1)


def _fallback_uri(info: LocalServerInfo) -> tuple[str, str]:
    """The default endpoint's `host` and a connection_uri that connected."""
    with api_client(info) as client:
        [project] = client.get("/projects").json()["projects"]
        [endpoint] = client.get(f"/projects/{project['id']}/endpoints").json()["endpoints"]
        assert not {"port", "pooler_port"} & set(endpoint)
        uri = connection_uri(client, project["id"], endpoint["branch_id"], pooled=True)
    assert sql(uri, "SELECT 1") == [(1,)]
    return str(endpoint["host"]), uri


def _made(path: Path) -> Path:
    path.mkdir()
    return path


def test_doctor_says_why_urls_built_from_host_do_not_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"ep-doctor-{secrets.token_hex(4)}"
    # the default branch's endpoint gets this id, so its addresses are known beforehand
    monkeypatch.setattr(ids, "endpoint_id", lambda: endpoint)
    home = tmp_path / "home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    project = copy_example(_made(tmp_path / "project"))
    with ExitStack() as stack:
        _occupy(loopback_addresses(endpoint), stack)
        info = stack.enter_context(start_test_server(home))
        publish(info, "memory")
        code, out, err = cli("doctor", cwd=project)
        fallback = _fallback_uri(info)
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if "endpoint hosts" in line]
    assert len(lines) == 1, out
    line = lines[0]
    assert line.startswith("[warn] endpoint hosts: URLs built from an endpoint's host alone do not connect")
    assert f":{DEFAULT_PORT} (" in line  # why: which address could not be listened on
    assert "connection_uri (127.0.0.1 with the endpoint's ports" in line
    # the fallback itself: host 127.0.0.1, no port fields, connection_uri with its port connects
    host, uri = fallback
    assert host == "127.0.0.1"
    parts = urlsplit(uri)
    assert parts.hostname == "127.0.0.1" and parts.port not in (None, DEFAULT_PORT)


def test_doctor_says_a_pooled_host_cannot_be_made_from_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Addresses mode (forced here; chosen where `*.localhost` does not resolve): `host`
    and `pooler_host` connect, but `-pooler` inserted into an address makes no host, and
    doctor says so in its one line, with why."""
    home = tmp_path / "home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_LOCAL_HOSTS", "addresses")
    project = copy_example(_made(tmp_path / "project"))
    with start_test_server(home) as info:
        publish(info, "memory")
        code, out, err = cli("doctor", cwd=project)
        with api_client(info) as client:
            [project_row] = client.get("/projects").json()["projects"]
            [endpoint] = client.get(f"/projects/{project_row['id']}/endpoints").json()["endpoints"]
    assert code == 0, out + err
    [line] = [line for line in out.splitlines() if "endpoint hosts" in line]
    if endpoint["host"] == "127.0.0.1":
        pytest.skip("no loopback address of its own on 5432 here: the other line applies")
    assert line.startswith("[ok  ] endpoint hosts: URLs built from an endpoint's host or pooler_host connect")
    assert "inserting -pooler into host does not (CATHOUSE_LOCAL_HOSTS=addresses)" in line
