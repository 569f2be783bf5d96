"""What Neon's project lock costs an xdist session: 4 workers forking at once.

    python benchmarks/project_lock.py [--reps 15] [--workers 4]

Neon answers 423 to a mutation while the project has running operations, and the local
server does too, so workers that fork at the same moment queue up through retries.
Each repetition, on one local server (own temporary home): one fork alone
(`create_owned_branch`, what a worker's session start does), then `--workers` forks
started together, each from its own client as xdist workers' are, then their deletes
together (teardown). Printed: the fork alone, each concurrent fork (median and the
slowest of each round), the round's wall time, and the 423s met (retries) per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import (
    EXAMPLE,
    add_results_option,
    fmt,
    fork_session,
    home_env,
    stop_home,
    summary,
    write_results,
)


async def _fork(client: Any, project: str, parent_id: str, settings: Any, label: str) -> tuple[str, float]:
    import time

    started = time.perf_counter()
    name = f"harness/bench-lock/{label}-{uuid.uuid4().hex[:6]}"
    handle = await fork_session(client, project, parent_id, settings, name, "bench-lock")
    return handle.id, time.perf_counter() - started


async def _timed_delete(client: Any, project: str, branch_id: str) -> float:
    import time

    from cathouse_harness.branching.lifecycle import delete_owned_branch

    started = time.perf_counter()
    await delete_owned_branch(client, project, branch_id)
    return time.perf_counter() - started


async def _measure(reps: int, workers: int) -> dict[str, Any]:
    import time

    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.neon.backend import connect_backend, open_client

    settings = load_settings(EXAMPLE)
    backend = connect_backend(settings)
    # seconds per measure: the fork alone, each concurrent fork, the slowest of a round,
    # a round's wall time, its teardown; and the 423s each round retried
    runs: dict[str, list[float]] = defaultdict(list)
    retries: list[int] = []
    clients = [open_client(backend) for _ in range(workers)]
    try:
        project = backend.project_id
        parent_id = (await clients[0].resolve_branch(project, settings.parent_branch)).id
        for i in range(reps):
            branch_id, seconds = await _fork(clients[0], project, parent_id, settings, f"alone-{i}")
            runs["fork_alone"].append(seconds)
            await _timed_delete(clients[0], project, branch_id)

            before = sum(c.stats.retries for c in clients)
            started = time.perf_counter()
            forks = await asyncio.gather(
                *(_fork(c, project, parent_id, settings, f"gw{n}-{i}") for n, c in enumerate(clients))
            )
            runs["round_wall"].append(time.perf_counter() - started)
            runs["fork_concurrent"].extend(seconds for _, seconds in forks)
            runs["fork_slowest_of_round"].append(max(seconds for _, seconds in forks))
            started = time.perf_counter()
            pairs = zip(clients, forks, strict=True)
            await asyncio.gather(*(_timed_delete(c, project, branch) for c, (branch, _) in pairs))
            runs["teardown_wall"].append(time.perf_counter() - started)
            retries.append(sum(c.stats.retries for c in clients) - before)
    finally:
        for client in clients:
            await client.aclose()
    result: dict[str, Any] = {"workers": workers, **{key: summary(values) for key, values in runs.items()}}
    result["retries_per_round"] = statistics.median(retries) if retries else 0
    result["slowest_vs_alone"] = result["fork_slowest_of_round"]["median"] / result["fork_alone"]["median"]
    return result


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The printed table's rows, which a results file keeps (`write_results`)."""
    n = result["workers"]
    timed_rows = [
        ("fork alone", result["fork_alone"]),
        (f"each of {n} concurrent forks", result["fork_concurrent"]),
        (f"slowest of the {n}", result["fork_slowest_of_round"]),
        (f"all {n} forked (wall)", result["round_wall"]),
        (f"all {n} deleted (wall)", result["teardown_wall"]),
    ]
    table = [[f"project lock: {label}", fmt(stats["median"]), f"min {fmt(stats['min'])}"]
             for label, stats in timed_rows]
    table.append([f"project lock: slowest of {n} / alone", f"{result['slowest_vs_alone']:.2f}x",
                  f"{result['retries_per_round']:g} 423s retried per round"])
    return table


def print_result(result: dict[str, Any]) -> None:
    print(f"project lock: {result['workers']} workers forking at once (medians; min)")
    for label, value, note in rows(result):
        print(f"  {label.removeprefix('project lock: '):<32} {value:>10}  ({note})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--workers", type=int, default=4)
    add_results_option(parser, "project_lock")
    args = parser.parse_args()
    began = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-home-lock-"))
    try:
        with home_env(home):
            result = asyncio.run(_measure(args.reps, args.workers))
    finally:
        stop_home(home)
    print_result(result)
    print(json.dumps(result, indent=1))
    if args.results:
        path = write_results("project_lock", result, rows(result), began, reps=args.reps,
                             workers=args.workers)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
