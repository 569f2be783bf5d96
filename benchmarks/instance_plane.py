"""The instance data plane (a PostgreSQL per branch) through the API, next to
the pg_ctl floor (#24 part 4).

    python benchmarks/instance_plane.py [--reps 7] [--warm 9] [--live 20]

On a temporary home whose local server runs a PostgreSQL per branch (the example's
template built by a first session):

- warm session → ready: `_probe.py` in a fresh process (`import_to_ready`, what the
  harness adds to a test run, and `spawn_to_ready`), `--warm` times (issue 24's target:
  `import_to_ready` ≤ 0.5 s);
- then, the sides taking turns, medians of `--reps` runs of
  * the floor by hand (`compute_fork.Bench.floor`: `cp -a` of a stopped instance's data
    directory and `pg_ctl -w start`, on a home of its own with the same PostgreSQL);
  * a per-worker fork (`create_owned_branch`, as the plugin makes it: create, wait,
    URL checks), and its first `SELECT 1` over the direct URL (API create → ready as
    a client sees it);
  * on that new branch, the first pooled `SELECT 1` (its instance's PgBouncer starts)
    and the next one;
- memory: one idle running instance (a fork that answered a `SELECT 1`, a second
  later), and `--live` branches forked and each queried once, all running: PSS of
  their processes (shared pages charged in proportion), the part beyond PostgreSQL's
  shared memory (target ≤ 40 MiB each), USS; then a fork → first `SELECT 1` while
  they all run.

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


def _select_one(url: str) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url) as connection:
        connection.execute("SELECT 1")
    return time.perf_counter() - started


async def _forks(home: Path, floor_home: Path, reps: int, live: int) -> dict[str, Any]:
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
    memory: dict[str, Any] = {}
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
            if live:
                memory = await _memory(client, project, parent_id, settings, home, live, reps)
    finally:
        await asyncio.to_thread(discard_bench, bench, floor_home)
    result: dict[str, Any] = {key: summary(values) for key, values in runs.items()}
    if live:
        result.update(memory)
    floor_median = statistics.median(runs["floor"])
    result["fork_vs_floor"] = result["fork"]["median"] / floor_median
    result["fork_to_ready_vs_floor"] = result["fork_to_ready"]["median"] / floor_median
    return result


def _instance_memory(home: Path, branch_id: str) -> Any:
    """The memory of the running instance of branch `branch_id` (named by it)."""
    from cathouse_harness.local.compute import probe
    from cathouse_harness.local.compute.layout import memory_bases

    for base in memory_bases(home):
        pid_file = base / "instances" / branch_id / "data" / "postmaster.pid"
        if pid_file.exists():
            return probe.memory(int(pid_file.read_text().split()[0]))
    raise RuntimeError(f"no running instance of {branch_id} under {home}")


async def _memory(client: Any, project: str, parent_id: str, settings: Any, home: Path, live: int,
                  reps: int) -> dict[str, Any]:
    """One idle instance's memory, then `live` running at once and a fork among them."""
    from cathouse_harness.branching.lifecycle import delete_owned_branch

    mib = float(1 << 20)
    handles: list[Any] = []
    try:
        while len(handles) < live:
            name = f"harness/bench-live/{uuid.uuid4().hex[:8]}"
            handles.append(await fork_session(client, project, parent_id, settings, name, "bench-live"))
            await asyncio.to_thread(_select_one, handles[-1].direct_url.reveal())
            if len(handles) == 1:
                await asyncio.sleep(1.0)  # its first checkpoint and autovacuum's look settle
                one = _instance_memory(home, handles[0].id)
        await asyncio.sleep(1.0)
        every = [_instance_memory(home, handle.id) for handle in handles]
        among: list[float] = []
        for _ in range(reps):
            started = time.perf_counter()
            name = f"harness/bench-live/{uuid.uuid4().hex[:8]}"
            handle = await fork_session(client, project, parent_id, settings, name, "bench-live")
            await asyncio.to_thread(_select_one, handle.direct_url.reveal())
            among.append(time.perf_counter() - started)
            await delete_owned_branch(client, project, handle.id)
    finally:
        for handle in handles:
            await delete_owned_branch(client, project, handle.id)
    return {
        "idle_instance": {"processes": one.processes, "pss_mib": one.pss / mib,
                          "beyond_shared_mib": one.beyond_shared_memory / mib, "uss_mib": one.uss / mib,
                          "rss_summed_mib": one.rss / mib},
        "live": {"count": live, "pss_mib": sum(m.pss for m in every) / mib,
                 "beyond_shared_mib_each": sum(m.beyond_shared_memory for m in every) / live / mib,
                 "uss_mib": sum(m.uss for m in every) / mib},
        "fork_to_ready_among_live": summary(among),
    }


def discard_bench(bench: Any, home: Path) -> None:
    """Remove a `compute_fork.Bench`, its home's instances and OS user."""
    from cathouse_harness.local.compute import instance as instances
    from cathouse_harness.local.compute import users

    instances.remove(bench.root)
    shutil.rmtree(bench.compute.base, ignore_errors=True)
    users.remove_home_user(home)


def measure(root: Path, reps: int, warm: int, live: int = 20) -> dict[str, Any]:
    """A home of its own under `root`, its server running the instance data plane."""
    home, floor_home = root / "instance-plane", root / "instance-floor"
    floor_home.mkdir(mode=0o700, parents=True)
    probes: list[dict[str, Any]] = []
    try:
        probe(home, EXAMPLE, "bench-instance-prime")
        for i in range(warm):
            probes.append(probe(home, EXAMPLE, f"bench-instance-warm-{i}"))
        with home_env(home):
            result = asyncio.run(_forks(home, floor_home, reps, live))
    finally:
        stop_home(home)
        _discard_home_user(home)
    result["warm_instance_import_to_ready"] = summary([p["import_to_ready"] for p in probes])
    result["warm_instance_spawn_to_ready"] = summary([p["spawn_to_ready"] for p in probes])
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
    ]
    if "fork_to_ready_among_live" in result:
        count = result["live"]["count"]
        rows.append((f"fork → first SELECT 1, {count} others running", result["fork_to_ready_among_live"]))
    print("issue 24: the instance data plane (medians; min)")
    for label, stats in rows:
        print(f"  {label:<44} {fmt(stats['median']):>10}  (min {fmt(stats['min'])})")
    print(f"  fork / pg_ctl floor            {result['fork_vs_floor']:.2f}x  (target <= 1.5, <= 150 ms)")
    print(f"  fork → ready / pg_ctl floor    {result['fork_to_ready_vs_floor']:.2f}x")
    print(f"  warm session import_to_ready   {fmt(result['warm_instance_import_to_ready']['median'])}"
          "  (target <= 0.5 s)")
    if "idle_instance" in result:
        one, many = result["idle_instance"], result["live"]
        print(f"  one idle instance: {one['processes']} processes, PSS {one['pss_mib']:.1f} MiB, "
              f"beyond shared memory {one['beyond_shared_mib']:.1f} MiB (target <= 40), "
              f"USS {one['uss_mib']:.1f} MiB, RSS summed {one['rss_summed_mib']:.1f} MiB")
        print(f"  {many['count']} live branches: PSS {many['pss_mib']:.0f} MiB in total, "
              f"beyond shared memory {many['beyond_shared_mib_each']:.1f} MiB each, "
              f"USS {many['uss_mib']:.0f} MiB in total")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warm", type=int, default=9)
    parser.add_argument("--live", type=int, default=20, help="branches running at once (0: no memory part)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-instance-"))
    root.chmod(0o700)
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine load {' '.join(load)}", file=sys.stderr)
        result = measure(root, args.reps, args.warm, args.live)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_result(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
