"""What a session waits for at Neon's latencies, on a server of its own with a latency
profile: its end asks for its branch's deletion and does not wait for the operation (on
Neon about a second), the watchdog follows the delete once the session is gone; its start
sends the lookups that do not depend on each other together. Only the order of requests
is asserted (from the server's journal), never a duration."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from cathouse_harness.branching.lifecycle import BranchHandle
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.local.discovery import live_server
from cathouse_harness.neon.backend import connect_backend, open_client
from cathouse_harness.session.branch_session import BranchSession

from tests.plugin._support import branches_of_run, confirmed_deletes, copy_example, home_of_its_own


@pytest.fixture
def slow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A home and server of their own: every request takes 0.1 s, a branch delete's
    operation stays running for 5 s."""
    with home_of_its_own(
        tmp_path, monkeypatch, CATHOUSE_LOCAL_LATENCY="rtt=0.1,delete_timeline=5"
    ) as home:
        yield home


def _one_session(settings: Settings, run_id: str) -> tuple[BranchSession, BranchHandle]:
    session = BranchSession(settings, run_id=run_id)
    handle = session.start()
    session.finish()
    assert session.report.delete_failed == []
    return session, handle


def test_teardown_leaves_the_delete_running_and_the_watchdog_confirms_it(
    tmp_path: Path, slow_server: Path
) -> None:
    project = copy_example(tmp_path / "project")
    settings = load_settings(project)
    _, handle = _one_session(settings, "td1")

    async def delete_operations() -> list[str]:
        backend = connect_backend(settings)
        async with open_client(backend) as client:
            return [
                op.status for op in await client.list_operations(backend.project_id)
                if op.branch_id == handle.id and op.action == "delete_timeline"
            ]

    # finish() returned while the delete's operation still runs: it did not wait for it
    statuses = asyncio.run(delete_operations())
    assert statuses and all(status in ("scheduling", "running") for status in statuses), statuses
    # the watchdog outlived the session and saw the delete through
    assert branches_of_run(project, "td1") == []
    assert asyncio.run(delete_operations()) == ["finished"]


def test_a_warm_start_asks_for_the_parent_and_the_template_in_one_round_trip(
    tmp_path: Path, slow_server: Path
) -> None:
    settings = load_settings(copy_example(tmp_path / "project"))
    _one_session(settings, "td2")  # builds the template
    confirmed_deletes(settings, "td2")  # its watchdog's requests are not the warm start's
    since = time.time()
    warm, _ = _one_session(settings, "td3")
    assert warm.report.template_reused

    info = live_server(slow_server, "memory")
    assert info is not None
    entries = httpx.get(
        f"{info.api_host}/_local/requests", params={"since": since},
        headers={"Authorization": f"Bearer {info.api_key.reveal()}"}, timeout=30,
    ).json()["requests"]
    fork = next(e for e in entries if e["method"] == "POST" and e["path"].endswith("/branches"))
    before = [e for e in entries if e["received"] < fork["received"]]
    # every request before the fork was sent before any of them was answered
    assert before and max(e["received"] for e in before) < min(e["answered"] for e in before), before
