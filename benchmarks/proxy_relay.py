"""What taking over CREATE / DROP DATABASE costs every other query through the proxy.

    python benchmarks/proxy_relay.py [--queries 2000] [--reps 7] [--rows 100000]

One embedded PostgreSQL (own temporary home) and its data plane on a thread of their
own. Two endpoints on the same database, both authenticating at the proxy as the
catalog's gate does: `old` copies bytes after the startup (an Admission without `sql`,
the relay before this change), `new` frames the client's stream and watches the
server's (`harness.local.sql_relay`). Per-query latency of `SELECT 1` on an open
connection over asyncpg (extended protocol, as `fetchval` sends it) and psycopg
(extended, prepared after five runs), direct and pooled, and one bulk read
(`generate_series`, asyncpg, direct) for the server-to-client side; medians of
interleaved runs, ratio new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import bench_plane, fmt, interleaved
from proxy_auth import _query_latency

ROLE = "bench_owner"


class _Unused:
    """A SqlSession for a benchmark that sends no CREATE/DROP DATABASE."""

    def attach(self, end: Callable[[], None]) -> None:
        del end

    def detach(self) -> None:
        pass

    async def perform(self, statement: Any, borrow: Any) -> None:
        raise AssertionError("the benchmark sends no CREATE/DROP DATABASE")


def _setup(home: Path) -> tuple[Any, Any, dict[str, dict[str, str]]]:
    from harness.local.proxy import Admission

    loop, plane, _internal, branch_pw, credential = bench_plane(home, ROLE)

    def gate_for(side: str) -> Any:
        async def gate(user: str, logical: str) -> Admission:
            return Admission("bench", {}, credential, _Unused() if side == "new" else None)

        return gate

    urls: dict[str, dict[str, str]] = {}
    for side in ("old", "new"):
        address = loop.run(plane.open_endpoint(f"ep-{side}", databases={}, gate=gate_for(side)))
        query = f"sslmode=verify-full&sslrootcert={plane.ca_file}"
        urls[side] = {
            kind: f"postgresql://{ROLE}:{branch_pw}@127.0.0.1:{port}/bench?{query}"
            for kind, port in (("direct", address.direct_port), ("pooled", address.pooled_port))
        }
    return loop, plane, urls


def _psycopg_latency(url: str, queries: int, pooled: bool) -> float:
    import psycopg

    # PgBouncer in transaction mode keeps no prepared statement for a client
    with psycopg.connect(url, autocommit=True, prepare_threshold=None if pooled else 5) as conn:
        conn.execute("SELECT 1").fetchone()
        started = time.perf_counter()
        for _ in range(queries):
            conn.execute("SELECT 1").fetchone()
        return (time.perf_counter() - started) / queries


async def _bulk_read(url: str, rows: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.fetch("SELECT generate_series(1, $1) AS n", rows)
        return time.perf_counter() - started
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    sides = ["old", "new"]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cathouse-bench-relay-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        loop, plane, urls = _setup(home)
        kinds = ["direct", "pooled"] if plane.pgbouncer_available else ["direct"]
        try:
            for kind in kinds:
                results[f"asyncpg SELECT 1, {kind}"] = interleaved(
                    sides,
                    args.reps,
                    lambda s, k=kind: asyncio.run(_query_latency(urls[s][k], args.queries)),
                )
                results[f"psycopg SELECT 1, {kind}"] = interleaved(
                    sides,
                    args.reps,
                    lambda s, k=kind: _psycopg_latency(urls[s][k], args.queries, k == "pooled"),
                )
            results[f"bulk read {args.rows} rows, direct"] = interleaved(
                sides, args.reps, lambda s: asyncio.run(_bulk_read(urls[s]["direct"], args.rows))
            )
        finally:
            loop.run(plane.stop())
            loop.close()
    print(f"{'measure':<32} {'old':>10} {'new':>10}  new/old")
    for name, row in results.items():
        cells = " ".join(f"{fmt(row[s]) if row[s] >= 1e-3 else f'{row[s] * 1e6:.0f} µs':>10}" for s in sides)
        print(f"{name:<32} {cells}  {row['new'] / row['old']:7.3f}")
    print(json.dumps({"queries": args.queries, "reps": args.reps, "rows": args.rows, "medians_s": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
