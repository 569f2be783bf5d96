"""The instance data plane (`CATHOUSE_LOCAL_COMPUTE=instance`) through the API, next to
the pg_ctl floor (#24).

    python benchmarks/instance_plane.py [--reps 7] [--warm 9]

On a temporary home whose local server runs a PostgreSQL per branch (the example's
template built by a first session):

- warm session → first test: `_probe.py` in a fresh process (`import_to_ready`, what the
  harness adds to a test run, and `spawn_to_ready`), `--warm` times, the shared plane's
  on a home of its own taking turns with it;
- then, the sides taking turns, medians of `--reps` runs of
  * the floor by hand (`compute_fork.Bench.floor`: `cp -a` of a stopped instance's data
    directory and `pg_ctl -w start`, on a home of its own with the same PostgreSQL);
  * a per-worker fork (`create_owned_branch`, as the plugin makes it: create, wait,
    URL checks), and its first `SELECT 1` over the direct URL (API create → ready as
    a client sees it);
  * on that new branch, the first pooled `SELECT 1` (its instance's PgBouncer starts)
    and the next one.

Ratios are to the pg_ctl floor of the same run (issue 24's target: ≤ 1.5x, ≤ 150 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import EXAMPLE, fmt, fork_session, home_env, probe, stop_home, summary
from cathouse_harness.support.env import overridden

_ENV = {"CATHOUSE_LOCAL_COMPUTE": "instance"}


def _select_one(url: str) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url) as connection:
        connection.execute("SELECT 1")
    return time.perf_counter() - started


async def _forks(home: Path, floor_home: Path, reps: int) -> dict[str, Any]:
    import compute_fork
    from cathouse_harness.branching.lifecycle import delete_owned_branch
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.neon.backend import connect_backend, open_client

    settings = load_settings(EXAMPLE)
    backend = connect_backend(settings)
    project = backend.project_id
    bench = await asyncio.to_thread(compute_fork.Bench, floor_home, "wheel", "memory")
    runs: dict[str, list[float]] = {key: [] for key in ("floor", "fork", "fork_to_ready", "pooled_first",
                                                         "pooled_next")}
    try:
        async with open_client(backend) as client:
            parent_id = (await client.resolve_branch(project, settings.parent_branch)).id

            async def fork() -> None:
                started = time.perf_counter()
                name = f"harness/bench-instance/{uuid.uuid4().hex[:8]}"
                handle = await fork_session(client, project, parent_id, settings, name, "bench-instance")
                runs["fork"].append(time.perf_counter() - started)
                await asyncio.to_thread(_select_one, handle.direct_url.reveal())
                runs["fork_to_ready"].append(time.perf_counter() - started)
                runs["pooled_first"].append(await asyncio.to_thread(_select_one, handle.pooled_url.reveal()))
                runs["pooled_next"].append(await asyncio.to_thread(_select_one, handle.pooled_url.reveal()))
                await delete_owned_branch(client, project, handle.id)

            async def floor() -> None:
                runs["floor"].append(await asyncio.to_thread(bench.floor, False))

            for rep in range(reps):  # each side first as often
                for side in ((fork, floor) if rep % 2 else (floor, fork)):
                    await side()
    finally:
        await asyncio.to_thread(_discard_bench, bench, floor_home)
    result: dict[str, Any] = {key: summary(values) for key, values in runs.items()}
    floor_median = statistics.median(runs["floor"])
    result["fork_vs_floor"] = result["fork"]["median"] / floor_median
    result["fork_to_ready_vs_floor"] = result["fork_to_ready"]["median"] / floor_median
    return result


def _discard_bench(bench: Any, home: Path) -> None:
    from cathouse_harness.local.compute import instance as instances
    from cathouse_harness.local.compute import users

    instances.remove(bench.root)
    shutil.rmtree(bench.compute.base, ignore_errors=True)
    users.remove_home_user(home)


def measure(root: Path, reps: int, warm: int) -> dict[str, Any]:
    """A home of its own under `root`, its server running the instance data plane."""
    home, floor_home, shared_home = root / "instance-plane", root / "instance-floor", root / "shared-plane"
    floor_home.mkdir(mode=0o700, parents=True)
    probes: dict[str, list[dict[str, Any]]] = {"instance": [], "shared": []}

    def session(plane: str, run_id: str) -> dict[str, Any]:
        # the probe's process, and the server it starts, inherit the variable
        with overridden({key: value if plane == "instance" else None for key, value in _ENV.items()}):
            return probe(home if plane == "instance" else shared_home, EXAMPLE, run_id)

    try:
        for plane in probes:
            session(plane, f"bench-{plane}-prime")
        for i in range(warm):
            for plane in (("instance", "shared") if i % 2 else ("shared", "instance")):
                probes[plane].append(session(plane, f"bench-{plane}-warm-{i}"))
        with overridden(_ENV), home_env(home):
            result = asyncio.run(_forks(home, floor_home, reps))
    finally:
        stop_home(home)
        stop_home(shared_home)
        _discard_home_user(home)
    for plane, runs in probes.items():
        result[f"warm_{plane}_import_to_ready"] = summary([p["import_to_ready"] for p in runs])
        result[f"warm_{plane}_spawn_to_ready"] = summary([p["spawn_to_ready"] for p in runs])
    result["warm_instance_vs_shared"] = (result["warm_instance_import_to_ready"]["median"]
                                         / result["warm_shared_import_to_ready"]["median"])
    return result


def _discard_home_user(home: Path) -> None:
    from cathouse_harness.local.compute import users

    users.remove_home_user(home)


def print_result(result: dict[str, Any]) -> None:
    rows = [
        ("floor by hand: cp -a + pg_ctl -w start", result["floor"]),
        ("per-worker fork (create_owned_branch)", result["fork"]),
        ("fork → first SELECT 1 (create → ready)", result["fork_to_ready"]),
        ("first pooled SELECT 1 (PgBouncer starts)", result["pooled_first"]),
        ("next pooled SELECT 1", result["pooled_next"]),
        ("warm session → ready (import_to_ready)", result["warm_instance_import_to_ready"]),
        ("warm session → ready (spawn_to_ready)", result["warm_instance_spawn_to_ready"]),
        ("shared plane: warm session (import_to_ready)", result["warm_shared_import_to_ready"]),
    ]
    print("issue 24: the instance data plane (medians; min)")
    for label, stats in rows:
        print(f"  {label:<44} {fmt(stats['median']):>10}  (min {fmt(stats['min'])})")
    print(f"  fork / pg_ctl floor            {result['fork_vs_floor']:.2f}x  (target <= 1.5, <= 150 ms)")
    print(f"  fork → ready / pg_ctl floor    {result['fork_to_ready_vs_floor']:.2f}x")
    print(f"  warm session instance / shared {result['warm_instance_vs_shared']:.2f}x  "
          "(target: import_to_ready <= 0.5 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warm", type=int, default=9)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-instance-"))
    root.chmod(0o700)
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine load {' '.join(load)}", file=sys.stderr)
        result = measure(root, args.reps, args.warm)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_result(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
