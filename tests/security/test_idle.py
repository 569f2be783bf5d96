"""Item 3 (in part): the local server does not idle out under an app that uses its branch.

Only API requests used to count: an app holding a connection, or a developer's `.env`
branch from `cathouse-branch up`, went away with the server once the idle timeout passed
(and its port was free for anyone to take). Now an open client connection and an
unexpired dev branch keep the server up; with neither, it still idles out.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cathouse_harness.branching.lifecycle import MARK, MARK_KIND, MARK_RUN
from cathouse_harness.local.compute.layout import memory_bases
from cathouse_harness.local.server import LocalServerInfo, ServerHandle, serve
from cathouse_harness.support.sync import LoopThread

from tests.local._server import api_client, connection_uri, create_ready_branch, delete_branch

IDLE_TIMEOUT = 0.5


@pytest.fixture
def idling_server(tmp_path: Path) -> Iterator[tuple[LocalServerInfo, threading.Thread]]:
    """A local server with a short idle timeout, on a thread that ends when it stops."""
    handle = ServerHandle()
    ready = threading.Event()

    def run() -> None:
        try:
            asyncio.run(serve(tmp_path / "home", idle_timeout=IDLE_TIMEOUT, handle=handle,
                              ready=lambda _info: ready.set(), database="cathouse",
                              role="cathouse_owner"))
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="idling-server", daemon=True)
    thread.start()
    ready.wait(90)
    assert handle.info is not None, "the server did not start"
    yield handle.info, thread
    handle.stop()
    thread.join(60)
    for directory in memory_bases(tmp_path / "home"):
        shutil.rmtree(directory, ignore_errors=True)


def stays_up(thread: threading.Thread) -> bool:
    """Whether the server is still serving after several idle timeouts have passed."""
    until = time.monotonic() + 6 * IDLE_TIMEOUT
    while time.monotonic() < until:
        if not thread.is_alive():
            return False
        time.sleep(0.05)
    return thread.is_alive()


def test_connections_and_dev_branches_keep_the_server_up(
    idling_server: tuple[LocalServerInfo, threading.Thread]
) -> None:
    info, thread = idling_server
    with api_client(info) as api:
        main = next(b for b in api.get(f"/projects/{info.project_id}/branches").json()["branches"]
                    if b["default"])
        uri = connection_uri(api, info.project_id, main["id"], pooled=False)
    loop = LoopThread("idle-test")
    try:
        connection = loop.run(asyncpg.connect(uri))
        assert stays_up(thread), "the server idled out under an open client connection"
        loop.run(connection.close())
    finally:
        loop.close()

    with api_client(info) as api:
        until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        dev = create_ready_branch(
            api, info.project_id, name="harness/dev/someone", expires_at=until,
            annotation={MARK: "1", MARK_RUN: "dev-someone", MARK_KIND: "dev"},
        )
    assert stays_up(thread), "the server idled out while a developer's branch lived"

    with api_client(info) as api:
        delete_branch(api, info.project_id, dev["branch"]["id"])
    thread.join(60)
    assert not thread.is_alive(), "with nothing using it, the server should still idle out"


def test_a_request_slower_than_the_idle_timeout_keeps_the_server_up(
    idling_server: tuple[LocalServerInfo, threading.Thread]
) -> None:
    """Idle counted from a request's start: one that took longer than the timeout (a
    fork or a compute starting on a loaded machine) had the server shut down under it,
    and the client's next request found no server. Made slow here by the fault
    injector's latency, which the admin routes (`/_local/`) do not get."""
    info, thread = idling_server
    with api_client(info) as api:
        api.put("/_local/faults", json={"spec": f"latency={8 * IDLE_TIMEOUT}"}).raise_for_status()
    answers: list[int] = []

    def ask() -> None:
        with api_client(info) as api:
            answers.append(api.get(f"/projects/{info.project_id}/branches").status_code)

    asking = threading.Thread(target=ask, name="slow-request")
    asking.start()
    try:
        assert stays_up(thread), "the server stopped while answering a request"
        with api_client(info) as api:  # it still takes requests, as it would have before
            api.put("/_local/faults", json={"spec": ""}).raise_for_status()
    finally:
        asking.join(60)
    assert answers == [200]
    thread.join(60)
    assert not thread.is_alive(), "with nothing using it, the server should still idle out"
