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

import pytest

from harness.local import ids
from harness.local.hosts import DEFAULT_PORT, loopback_addresses
from harness.local.server import publish
from tests.cli._support import cli
from tests.local._server import start_test_server
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
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if "endpoint hosts" in line]
    assert len(lines) == 1, out
    line = lines[0]
    assert line.startswith("[warn] endpoint hosts: URLs built from an endpoint's host alone do not connect")
    assert f":{DEFAULT_PORT} (" in line  # why: which address could not be listened on
    assert "connection_uri (and the URLs cathouse-branch writes) keep working" in line
