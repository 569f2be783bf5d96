"""Fixtures of the local server's tests: one real server (real PostgreSQL) per module,
a plain httpx client on it that checks every answer against Neon's reference, and the
server's project id. A module that needs another server (faults, limits) defines its own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from cathouse_harness.local.server import LocalServerInfo

from tests.local._server import api_client, start_test_server


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServerInfo]:
    name = request.module.__name__.rsplit(".", 1)[-1]
    with start_test_server(tmp_path_factory.mktemp(f"{name}-home")) as info:
        yield info


@pytest.fixture
def client(server: LocalServerInfo) -> Iterator[httpx.Client]:
    with api_client(server) as c:
        yield c


@pytest.fixture
def project(server: LocalServerInfo) -> str:
    return server.project_id
