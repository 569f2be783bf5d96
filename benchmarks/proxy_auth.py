"""What verifying the endpoint (CA, verify-full) and authenticating at the proxy cost.

    python benchmarks/proxy_auth.py [--reps 60] [--queries 500] [--query-reps 9]

One embedded PostgreSQL (own temporary home) and its data plane on a thread of their
own; the client runs in the main thread. Three endpoints on the same database:

- `old`: the path before #14 item 3: `sslmode=require` (no certificate check), the proxy
  copies bytes and PostgreSQL runs SCRAM with the client;
- `ca`: the same pass-through with `sslmode=verify-full` and the home's CA;
- `new`: verify-full, and the proxy runs SCRAM with the client against the branch's own
  verifier (as the catalog makes it) while it logs in upstream with the internal password.

Connect (asyncpg and psycopg, direct; asyncpg pooled through PgBouncer when installed)
and per-query latency (`SELECT 1` on an open connection), medians, interleaved so the
machine's noise falls on every side alike; ratios against `old`. Last, what opening
an endpoint costs with its own loopback address on 5432 (`cathouse_harness.local.hosts`) beside
its two port listeners.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_results_option, bench_plane, connect_query_parser, fmt, interleaved, recorded

ROLE = "bench_owner"


def _setup(home: Path) -> tuple[Any, Any, dict[str, dict[str, str]]]:
    from cathouse_harness.local.proxy import Admission

    loop, plane, internal, branch_pw, credential = bench_plane(home, ROLE)

    async def gate(user: str, logical: str, at: Any = None) -> Admission:  # at: no time travel here
        return Admission("bench", {}, credential)

    ca = f"sslmode=verify-full&sslrootcert={plane.ca_file}"
    urls: dict[str, dict[str, str]] = {}
    for name, password, query, with_gate in (
        ("old", internal, "sslmode=require", False),
        ("ca", internal, ca, False),
        ("new", branch_pw, ca, True),
    ):
        address = loop.run(
            plane.open_endpoint(f"ep-{name}", databases={"bench": "bench"}, gate=gate if with_gate else None)
        )
        urls[name] = {
            kind: f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/bench?{query}"
            for kind, port in (("direct", address.direct_port), ("pooled", address.pooled_port))
        }
    return loop, plane, urls


async def _asyncpg_connect(url: str) -> float:
    import asyncpg

    started = time.perf_counter()
    conn = await asyncpg.connect(url, statement_cache_size=0)
    took = time.perf_counter() - started
    await conn.close()
    return took


def _psycopg_connect(url: str) -> float:
    import psycopg

    started = time.perf_counter()
    conn = psycopg.connect(url)
    took = time.perf_counter() - started
    conn.close()
    return took


async def _query_latency(url: str, queries: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        await conn.fetchval("SELECT 1")
        started = time.perf_counter()
        for _ in range(queries):
            await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) / queries
    finally:
        await conn.close()


def _endpoint_open(loop: Any, plane: Any, with_host: bool) -> float:
    """Opening (and closing) an endpoint, with or without its own address on 5432."""
    listeners = plane.listeners
    original = listeners.listen_on_host

    async def no_host(*_args: Any) -> None:
        return None

    async def cycle() -> float:
        started = time.perf_counter()
        await plane.open_endpoint("ep-open", databases={"bench": "bench"})
        took = time.perf_counter() - started
        await plane.close_endpoint("ep-open")
        return took

    if not with_host:
        listeners.listen_on_host = no_host
    try:
        return float(loop.run(cycle()))
    finally:
        listeners.listen_on_host = original


def main() -> int:
    parser = connect_query_parser(__doc__)
    add_results_option(parser, "proxy_auth")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cathouse-bench-proxy-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        loop, plane, urls = _setup(home)
        sides = list(urls)
        kinds = ["direct", "pooled"] if plane.pgbouncer_available else ["direct"]
        results: dict[str, dict[str, float]] = {}
        try:
            for kind in kinds:
                results[f"asyncpg connect, {kind}"] = interleaved(
                    sides, args.reps, lambda s, k=kind: asyncio.run(_asyncpg_connect(urls[s][k]))
                )
                if kind == "direct":
                    results["psycopg connect, direct"] = interleaved(
                        sides, args.reps, lambda s: _psycopg_connect(urls[s]["direct"])
                    )
                results[f"query latency, {kind}"] = interleaved(
                    sides,
                    args.query_reps,
                    lambda s, k=kind: asyncio.run(_query_latency(urls[s][k], args.queries)),
                )
            opened = interleaved(
                ["two listeners", "with host"], args.reps,
                lambda side: _endpoint_open(loop, plane, side == "with host"),
            )
        finally:
            loop.run(plane.stop())
            loop.close()
    with recorded("proxy_auth", args, began):
        print(f"{'measure':<26} " + " ".join(f"{s:>10}" for s in sides) + "   ca/old  new/old")
        for name, row in results.items():
            cells = " ".join(f"{fmt(row[s]) if row[s] >= 1e-3 else f'{row[s] * 1e6:.0f} µs':>10}"
                             for s in sides)
            print(f"{name:<26} {cells}   {row['ca'] / row['old']:6.2f}  {row['new'] / row['old']:6.2f}")
        ratio = opened["with host"] / opened["two listeners"]
        print(f"endpoint open: {fmt(opened['two listeners'])} with two listeners, "
              f"{fmt(opened['with host'])} with its own address on 5432 too ({ratio:.2f})")
    print(json.dumps({"reps": args.reps, "queries": args.queries, "query_reps": args.query_reps,
                      "medians_s": results, "endpoint_open_s": opened}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
