"""What taking over CREATE / DROP DATABASE costs every other query through the proxy.

    python benchmarks/proxy_relay.py [--queries 2000] [--reps 7] [--rows 100000]

One embedded PostgreSQL (own temporary home) and its data plane on a thread of their
own. Two endpoints on the same database, both authenticating at the proxy as the
catalog's gate does: `old` copies bytes after the startup (an Admission without `sql`,
the relay before this change), `new` frames the client's stream and watches the
server's (`cathouse_harness.local.sql_relay`). Per-query latency of `SELECT 1` on an open
connection over asyncpg (extended protocol, as `fetchval` sends it) and psycopg
(extended, prepared after five runs), direct and pooled, and one bulk read
(`generate_series`, asyncpg, direct) for the server-to-client side; medians of
interleaved runs, ratio new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import add_results_option, bench_plane, fmt, interleaved, write_results

ROLE = "bench_owner"
# `same` is a second endpoint exactly like `old`: same/old is this machine's noise floor
SIDES = ("old", "same", "new")


class _Unused:
    """A SqlSession for a benchmark that sends no CREATE/DROP DATABASE."""

    def attach(self, end: Callable[[], None]) -> None:
        del end

    def detach(self) -> None:
        pass

    async def perform(self, statement: Any, borrow: Any) -> None:
        raise AssertionError("the benchmark sends no CREATE/DROP DATABASE")

    def feature_refusal(self, use: Any) -> str | None:
        raise AssertionError("the benchmark creates no extension or collation")


def _setup(home: Path) -> tuple[Any, Any, dict[str, dict[str, str]]]:
    from cathouse_harness.local.proxy import Admission

    loop, plane, _internal, branch_pw, credential = bench_plane(home, ROLE)

    def gate_for(side: str) -> Any:
        async def gate(user: str, logical: str, at: Any = None) -> Admission:  # at: no time travel here
            return Admission("bench", {}, credential, _Unused() if side == "new" else None)

        return gate

    urls: dict[str, dict[str, str]] = {}
    for side in SIDES:
        address = loop.run(plane.open_endpoint(f"ep-{side}", databases={}, gate=gate_for(side)))
        query = f"sslmode=verify-full&sslrootcert={plane.ca_file}"
        urls[side] = {
            kind: f"postgresql://{ROLE}:{branch_pw}@127.0.0.1:{port}/bench?{query}"
            for kind, port in (("direct", address.direct_port), ("pooled", address.pooled_port))
        }
    return loop, plane, urls


def _psycopg_rows(url: str, queries: int, pooled: bool) -> Iterator[Callable[[], float]]:
    """A measure of `queries` SELECT 1 on one open psycopg connection."""
    import psycopg

    # PgBouncer in transaction mode keeps no prepared statement for a client
    with psycopg.connect(url, autocommit=True, prepare_threshold=None if pooled else 5) as conn:
        conn.execute("SELECT 1").fetchone()

        def batch() -> float:
            started = time.perf_counter()
            for _ in range(queries):
                conn.execute("SELECT 1").fetchone()
            return (time.perf_counter() - started) / queries

        yield batch


def _asyncpg_rows(runner: asyncio.Runner, url: str, sql: str, times: int) -> Iterator[Callable[[], float]]:
    """A measure of `times` runs of `sql` on one open asyncpg connection."""
    import asyncpg

    conn = runner.run(asyncpg.connect(url, statement_cache_size=0))
    try:

        async def batch() -> float:
            started = time.perf_counter()
            for _ in range(times):
                await conn.fetch(sql)
            return (time.perf_counter() - started) / times

        yield lambda: runner.run(batch())
    finally:
        runner.run(conn.close())


Opener = Callable[[str], Iterator[Callable[[], float]]]


def _measure(sides: list[str], reps: int, open_side: Opener) -> dict[str, float]:
    """Both sides' connections open at once, their batches taking turns."""
    with contextlib.ExitStack() as stack:
        batches = {side: stack.enter_context(contextlib.contextmanager(open_side)(side)) for side in sides}
        return interleaved(sides, reps, lambda side: batches[side]())


def _framing_cost(rounds: int) -> dict[str, float]:
    """What the relay adds per query in CPU, without sockets: psycopg's unprepared
    SELECT 1 (Parse/Bind/Describe/Execute/Sync in one chunk) through the client-side
    framing, and its answer (one chunk) through the server-side count."""
    from cathouse_harness.local.proxy_auth import message
    from cathouse_harness.local.sql_relay import Relay

    class Sink:
        def write(self, data: bytes) -> None:
            del data

        async def drain(self) -> None:
            pass

    class Source:
        def __init__(self, chunk: bytes, times: int) -> None:
            self.chunk, self.left = chunk, times

        async def read(self, size: int) -> bytes:
            del size
            self.left -= 1
            return self.chunk if self.left >= 0 else b""

    query = (
        message(b"P", b"\0SELECT 1\0\0\0")
        + message(b"B", b"\0\0\0\0\0\0\0\0")
        + message(b"D", b"P\0")
        + message(b"E", b"\0\0\0\0\0")
        + message(b"S", b"")
    )
    answer = (
        message(b"1", b"")
        + message(b"2", b"")
        + message(b"T", b"\0\x01?column?\0" + bytes(18))
        + message(b"D", b"\0\x01\0\0\0\x011")
        + message(b"C", b"SELECT 1\0")
        + message(b"Z", b"I")
    )
    costs: dict[str, float] = {}
    for name, chunk in (("client chunk", query), ("server chunk", answer)):
        source = Source(chunk, rounds)
        relay: Any = Relay((source, Sink()), (source, Sink()), _Unused())  # type: ignore[arg-type]
        copy = relay._copy_up if name == "client chunk" else relay._copy_down
        started = time.perf_counter()
        asyncio.run(copy())
        costs[name] = (time.perf_counter() - started) / rounds
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--rows", type=int, default=100_000)
    add_results_option(parser, "proxy_relay")
    args = parser.parse_args()
    began = time.perf_counter()
    sides = list(SIDES)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cathouse-bench-relay-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        loop, plane, urls = _setup(home)
        kinds = ["direct", "pooled"] if plane.pgbouncer_available else ["direct"]
        runner = asyncio.Runner()
        try:
            for kind in kinds:
                results[f"asyncpg SELECT 1, {kind}"] = _measure(
                    sides,
                    args.reps,
                    lambda s, k=kind: _asyncpg_rows(runner, urls[s][k], "SELECT 1", args.queries),
                )
                results[f"psycopg SELECT 1, {kind}"] = _measure(
                    sides, args.reps, lambda s, k=kind: _psycopg_rows(urls[s][k], args.queries, k == "pooled")
                )
            bulk = f"SELECT generate_series(1, {args.rows}) AS n"
            results[f"bulk read {args.rows} rows, direct"] = _measure(
                sides, args.reps, lambda s: _asyncpg_rows(runner, urls[s]["direct"], bulk, 1)
            )
        finally:
            runner.close()
            loop.run(plane.stop())
            loop.close()
    framing = _framing_cost(args.queries * 50)
    print(f"{'measure':<32} " + " ".join(f"{s:>10}" for s in sides) + "  same/old  new/old")
    for name, row in results.items():
        cells = " ".join(f"{fmt(row[s]) if row[s] >= 1e-3 else f'{row[s] * 1e6:.0f} µs':>10}" for s in sides)
        print(f"{name:<32} {cells}  {row['same'] / row['old']:8.3f}  {row['new'] / row['old']:7.3f}")
    print(
        "the relay's own work, in process: "
        + ", ".join(f"{name} {seconds * 1e6:.1f} µs" for name, seconds in framing.items())
    )
    figures = {"queries": args.queries, "reps": args.reps, "rows": args.rows, "medians_s": results,
               "framing_s": framing}
    print(json.dumps(figures))
    if args.results:
        table = [
            [f"relay: {name}", fmt(row["new"]),
             f"new/old {row['new'] / row['old']:.2f}, noise floor (same/old) {row['same'] / row['old']:.2f}"]
            for name, row in results.items()
        ]
        table.append(["relay: its own framing, in process",
                      ", ".join(f"{name} {seconds * 1e6:.1f} µs" for name, seconds in framing.items()), ""])
        path = write_results("proxy_relay", figures, table, began, queries=args.queries, reps=args.reps,
                             rows=args.rows)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
