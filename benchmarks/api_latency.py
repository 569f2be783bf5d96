"""Create-to-ready and delete latency through the local Neon API, next to the raw copy.

    python benchmarks/api_latency.py [--reps 10]

A branch is a PostgreSQL instance of its own (#24), so the physical floor of a create is
copying a stopped instance's data directory and starting it. Each repetition:
`compute_fork.Bench.floor(tight=True)` on a home of its own with the same PostgreSQL
(`cp -a`, the postmaster exec'd by the shell, its readiness polled at 2 ms as the
plane's is; memory storage; its root holds 10,000 rows, the example's template a few
tables), and the floor of a delete (that copy's fast shutdown and its files removed);
then, on one running local server (own temporary home), the same through the API:
`create_branch` until its operations finished and the endpoint is usable, the harness's
whole per-worker fork (`create_owned_branch`: the same plus the URL checks), and
`delete_branch` until its operations finished.
Issue 3's target: create-to-ready within 2x of the raw copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    EXAMPLE,
    add_results_option,
    fmt,
    fork_session,
    home_env,
    recorded,
    stop_home,
    summary,
)


async def _measure(home: Path, template_id: str | None, reps: int, bench: Any) -> dict[str, Any]:
    from cathouse_harness.branching.lifecycle import delete_owned_branch
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.neon.backend import connect_backend, open_client

    settings = load_settings(EXAMPLE)
    backend = connect_backend(settings)
    project = backend.project_id
    raw_create: list[float] = []
    raw_drop: list[float] = []
    api_create: list[float] = []
    api_delete: list[float] = []
    fork: list[float] = []
    fork_delete: list[float] = []
    calls_per_fork: list[int] = []
    async with open_client(backend) as client:
        parent_id = template_id or (await client.resolve_branch(project, settings.parent_branch)).id
        for i in range(reps):
            raw_create.append(await asyncio.to_thread(bench.floor, True))
            raw_drop.append(bench.last_removal)

            started = time.perf_counter()
            created = await client.create_branch(
                project,
                name=f"harness/bench-api/{i}-{uuid.uuid4().hex[:6]}",
                parent_id=parent_id,
                annotation={
                    "cathouse-harness": "1",
                    "cathouse-harness.kind": "session",
                    "cathouse-harness.run": "bench-api",
                },
                wait=True,
            )
            api_create.append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.delete_branch(project, created.branch.id, wait=True)
            api_delete.append(time.perf_counter() - started)

            before = client.stats.calls
            started = time.perf_counter()
            name = f"harness/bench-fork/{i}-{uuid.uuid4().hex[:6]}"
            handle = await fork_session(client, project, parent_id, settings, name, "bench-fork")
            fork.append(time.perf_counter() - started)
            calls_per_fork.append(client.stats.calls - before)
            started = time.perf_counter()
            await delete_owned_branch(client, project, handle.id)
            fork_delete.append(time.perf_counter() - started)
    raw = summary(raw_create)
    result: dict[str, Any] = {
        "raw_copy": raw,
        "raw_drop": summary(raw_drop),
        "api_create_to_ready": summary(api_create),
        "api_delete": summary(api_delete),
        "fork": summary(fork),
        "fork_delete": summary(fork_delete),
        "api_calls_per_fork": max(calls_per_fork) if calls_per_fork else 0,
    }
    result["create_vs_raw"] = result["api_create_to_ready"]["median"] / raw["median"]
    result["fork_vs_floor"] = result["fork"]["median"] / raw["median"]
    result["delete_vs_raw_drop"] = result["api_delete"]["median"] / result["raw_drop"]["median"]
    return result


def measure(home: Path, reps: int, template_id: str | None = None) -> dict[str, Any]:
    """Needs the home's server up (it is started when missing); the floor runs on a
    home of its own beside `home`, removed after."""
    import compute_fork
    from instance_plane import discard_bench

    floor_home = Path(tempfile.mkdtemp(prefix="bench-floor-api-", dir=home.parent))
    bench = compute_fork.Bench(floor_home, "wheel", "memory")
    try:
        with home_env(home):
            return asyncio.run(_measure(home, template_id, reps, bench))
    finally:
        discard_bench(bench, floor_home)
        shutil.rmtree(floor_home, ignore_errors=True)


def print_result(result: dict[str, Any]) -> None:
    rows = [
        ("raw copy + start of an instance (floor)", result["raw_copy"]),
        ("API create → ready", result["api_create_to_ready"]),
        ("per-worker fork (create_owned_branch)", result["fork"]),
        ("raw stop + remove of an instance", result["raw_drop"]),
        ("API delete → finished", result["api_delete"]),
    ]
    print("issue 3 / 5: API latency against the raw copy (medians; min)")
    for label, stats in rows:
        print(f"  {label:<42} {fmt(stats['median']):>10}  (min {fmt(stats['min'])})")
    print(f"  create-to-ready / raw copy   {result['create_vs_raw']:.2f}x  (target <= 2)")
    print(f"  fork / raw copy              {result['fork_vs_floor']:.2f}x  (targets <= 1.5, <= 2)")
    print(f"  delete / raw drop            {result['delete_vs_raw_drop']:.2f}x")
    print(f"  API calls per fork           {result['api_calls_per_fork']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    add_results_option(parser, "api_latency")
    args = parser.parse_args()
    began = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-home-api-"))
    try:
        result = measure(home, args.reps)
    finally:
        stop_home(home)
    with recorded("api_latency", args, began):
        print_result(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
