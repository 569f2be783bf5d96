"""The watchdog on its own: heartbeat, cleanup when its owner goes, and its refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from cathouse_harness.branching.lifecycle import harness_branches
from cathouse_harness.cleanup.watchdog import start_watchdog
from cathouse_harness.config.settings import load_settings
from cathouse_harness.neon.backend import connect_backend, open_client

from tests.plugin._support import REPO, copy_example, session_branch_of_run


def test_heartbeat_then_cleanup_and_never_a_foreign_branch(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "project")
    settings = load_settings(project)
    backend = connect_backend(settings)

    async def setup() -> tuple[str, str, str]:
        async with open_client(backend) as client:
            ours = await session_branch_of_run(
                client, backend.project_id, settings, name="harness/wd1/main", run_id="wd1",
                ttl=timedelta(minutes=2),
            )
            decoy = await client.create_branch(backend.project_id, name="decoy/wd1", parent_id=ours.parent_id)
            expires = (await client.get_branch(backend.project_id, ours.id)).expires_at
            return ours.id, decoy.branch.id, expires.isoformat() if expires else ""

    ours, decoy, first_expiry = asyncio.run(setup())
    watchdog = start_watchdog(
        tmp_path / "markers", api_host=backend.api_host, api_key=str(backend.api_key),
        ttl=timedelta(hours=1), log_file=tmp_path / "watchdog.log", interval=0.2,
    )
    watchdog.record(backend.project_id, ours, "harness/wd1/main")
    watchdog.record(backend.project_id, decoy, "decoy/wd1")

    async def expiry_of(branch_id: str) -> str:
        async with open_client(backend) as client:
            expires = (await client.get_branch(backend.project_id, branch_id)).expires_at
            return expires.isoformat() if expires else ""

    deadline = time.monotonic() + 20
    while asyncio.run(expiry_of(ours)) == first_expiry and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asyncio.run(expiry_of(ours)) > first_expiry, "the heartbeat did not push expires_at"

    watchdog.stop()  # the same end of pipe the owner's death closes

    async def remaining() -> tuple[list[str], list[str]]:
        async with open_client(backend) as client:
            harness = [b.id for b in await harness_branches(client, backend.project_id, run_id="wd1")]
            everything = [b.id for b in await client.list_branches(backend.project_id)]
            if decoy in everything:
                await client.delete_branch(backend.project_id, decoy)
            return harness, everything

    harness, everything = asyncio.run(remaining())
    assert harness == []
    assert decoy in everything, "the watchdog deleted a branch the harness did not create"
    assert "refusing to delete decoy/wd1" in (tmp_path / "watchdog.log").read_text()


def test_owner_that_cleaned_up_costs_no_async_imports(tmp_path: Path) -> None:
    # The watchdog starts beside every session; when its owner recorded nothing (or
    # forgot all it recorded), it exits without loading asyncio or the client.
    markers = tmp_path / "markers"
    markers.mkdir()
    script = (
        "import sys\n"
        "from datetime import timedelta\n"
        "from pathlib import Path\n"
        "from cathouse_harness.cleanup.watchdog import run\n"
        f"rc = run(Path({str(markers)!r}), 'http://127.0.0.1:9', timedelta(minutes=15))\n"
        "print(rc, 'asyncio' in sys.modules, 'cathouse_harness.neon.client' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=b"key\n", capture_output=True, timeout=60,
        cwd=REPO, check=False,
    )
    assert done.stdout.decode().split() == ["0", "False", "False"], done.stderr.decode()
    assert not markers.exists()
