"""Our Neon client against the real local server with 30% of requests faulted.

The faults are the server's own (429 with Retry-After, 423, 500/503, connections dropped
before and after the mutation), so this is the client's resilience on the real code path,
with nothing mocked.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.neon.client import NeonClient, TransportOptions
from cathouse_harness.neon.retry import RetryPolicy

from tests.local._server import start_test_server

# 30% of requests in all: every kind a real Neon (or the network to it) produces
STORM = "rate429=0.08,retry_after=0,rate423=0.06,rate5xx=0.06,drop=0.05,drop_after=0.05,seed=7"
CYCLES = 50


@pytest.fixture(scope="module")
def stormy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServerInfo]:
    with start_test_server(tmp_path_factory.mktemp("storm-home"), faults=STORM) as info:
        yield info


def test_fifty_create_delete_cycles_leak_and_duplicate_nothing(stormy_server: LocalServerInfo) -> None:
    async def storm() -> tuple[list[str], Counter[str], int, int]:
        policy = RetryPolicy(max_attempts=12, base_delay=0.01, max_delay=0.2, deadline=60)
        options = TransportOptions(api_host=stormy_server.api_host, retry=policy)
        async with NeonClient(stormy_server.api_key.reveal(), options) as client:
            project = stormy_server.project_id
            main = await client.resolve_branch(project, "main")
            for cycle in range(CYCLES):
                created = await client.create_branch(
                    project, name=f"storm/{cycle}", parent_id=main.id, wait=True
                )
                await client.delete_branch(project, created.branch.id, wait=True)
            names = Counter(b.name for b in await client.list_branches(project))
            leaked = [n for n in names if n.startswith("storm/")]
            return leaked, names, client.stats.calls, client.stats.retries

    leaked, names, calls, retries = asyncio.run(storm())
    assert leaked == []
    assert all(count == 1 for count in names.values())
    # the storm really happened: a fault-free run needs no retry at all
    assert retries >= CYCLES * 0.3
    assert calls > retries
