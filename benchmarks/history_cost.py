"""What the local history (`cathouse_harness.local.control.history`) costs a client's connection.

    python benchmarks/history_cost.py [--reps 300]

One local server (own temporary home, real PostgreSQL) in this process; a client
connects to the default branch's endpoint (direct and pooled), runs `SELECT 1` and
leaves, back to back, alternating in blocks of BLOCK visits (so the background LSN read
after a leave mostly lands in its own block) between the endpoint's listeners telling
the control plane about connects and leaves as they do (`_on_connection`: the history
observes them, and reads an LSN after each leave, in the background) and as they did
before the history (`touch` only). The ratio of the medians is the history's cost on
the connection path; nothing else on that path changed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import add_results_option, recorded
from cathouse_harness.local.server import ServerHandle, serve

BLOCK = 10


def _start(home: Path) -> ServerHandle:
    handle = ServerHandle()
    ready = threading.Event()

    def run() -> None:
        try:
            asyncio.run(
                serve(home, ready=lambda _info: ready.set(), handle=handle, database="cathouse",
                      role="cathouse_owner")
            )
        finally:
            ready.set()

    threading.Thread(target=run, name="history-cost-server", daemon=True).start()
    ready.wait(90)
    if handle.info is None or handle.neon is None:
        raise SystemExit("the local server did not start")
    return handle


def _uri(handle: ServerHandle, pooled: bool) -> str:
    info = handle.info
    assert info is not None
    headers = {"Authorization": f"Bearer {info.api_key.reveal()}"}
    params = {"database_name": "cathouse", "role_name": "cathouse_owner", "pooled": str(pooled).lower()}
    with httpx.Client(base_url=info.api_host, headers=headers) as c:
        answer = c.get(f"/projects/{info.project_id}/connection_uri", params=params)
        answer.raise_for_status()
        return str(answer.json()["uri"])


def _hook(handle: ServerHandle, history: bool) -> None:
    """Point every open endpoint's listener at the history-observing callback or at the
    plain one (the attribute each listener calls on a connect and a leave)."""
    neon = handle.neon
    assert neon is not None
    callback = neon._on_connection if history else neon.touch  # noqa: SLF001 - what is measured
    for proxy in neon.dataplane.listeners.proxies.values():  # type: ignore[attr-defined]
        proxy.on_activity = callback


async def _visit(uri: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(uri, statement_cache_size=0)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _measure(handle: ServerHandle, uri: str, reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"history": [], "plain": []}
    for _ in range(10):  # warm up both paths
        await _visit(uri)
    for rep in range(reps):
        mode = "history" if (rep // BLOCK) % 2 == 0 else "plain"
        _hook(handle, mode == "history")
        times[mode].append(await _visit(uri))
    _hook(handle, True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    add_results_option(parser, "history_cost")
    args = parser.parse_args()
    if args.reps < 2 * BLOCK:  # the sides take turns in blocks: fewer leaves one side empty
        parser.error(f"--reps must be at least {2 * BLOCK} (two blocks of {BLOCK}, one a side)")
    began = time.perf_counter()
    handle = _start(Path(tempfile.mkdtemp(prefix="bench-home-history-")))
    result: dict[str, Any] = {}
    try:
        with recorded("history_cost", args, began):
            for pooled in (False, True):
                times = asyncio.run(_measure(handle, _uri(handle, pooled), args.reps))
                label = "pooled" if pooled else "direct"
                plain, history = statistics.median(times["plain"]), statistics.median(times["history"])
                result[label] = {"plain_ms": plain * 1e3, "history_ms": history * 1e3,
                                 "ratio": history / plain}
                print(
                    f"connect + SELECT 1 + leave, {label:<6}  before the history {plain * 1e3:6.2f} ms"
                    f"  with it {history * 1e3:6.2f} ms  ratio {history / plain:.3f}  ({args.reps // 2} each)"
                )
    finally:
        handle.stop()
        time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
