"""What the names-mode router costs against an endpoint's own listener (#15 part 1).

    python benchmarks/hosts_router.py [--reps 60] [--queries 500] [--query-reps 9]

One embedded PostgreSQL (own temporary home) and its data plane in names mode
(`CATHOUSE_LOCAL_HOSTS=names`, the router on a loopback address of its own) on a thread
of their own; the client (psycopg, libpq) in the main thread. One endpoint, reached two
ways with verify-full and the home's CA:

- `listener`: the endpoint's own listener (127.0.0.1 and its port), where the proxy
  does the TLS handshake itself, as with an endpoint's own address on 5432;
- `router`: `host=<endpoint-id>.local.localhost hostaddr=<router>` on 5432: the router
  does the handshake, reads the server name (SNI) and hands the connection to the same
  proxy.

Connect time (direct, and pooled through PgBouncer when installed) and per-query
latency (`SELECT 1` on an open connection), medians, interleaved so the machine's noise
falls on both sides alike; ratio router / listener.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SHARED_CLUSTER_GONE, add_results_option, connect_query_parser, fmt, interleaved, recorded

ROLE = "bench_owner"
ENDPOINT = "ep-bench-router-1"


def _setup(home: Path, router: str) -> tuple[Any, Any, dict[str, dict[str, dict[str, Any]]]]:
    """Was: the shared plane's `DataPlane` with one endpoint (its listeners and the
    router in front of one database); gone with #24, to be repointed at a local server
    (git history has the old setup)."""
    raise SystemExit(SHARED_CLUSTER_GONE)


def _connect(params: dict[str, Any]) -> float:
    import psycopg

    started = time.perf_counter()
    conn = psycopg.connect(**params)
    took = time.perf_counter() - started
    conn.close()
    return took


def _query_latency(params: dict[str, Any], queries: int) -> float:
    import psycopg

    with psycopg.connect(**params) as conn:
        conn.execute("SELECT 1")
        started = time.perf_counter()
        for _ in range(queries):
            conn.execute("SELECT 1")
        return (time.perf_counter() - started) / queries


def main() -> int:
    parser = connect_query_parser(__doc__)
    add_results_option(parser, "hosts_router")
    args = parser.parse_args()
    began = time.perf_counter()
    sides = ["listener", "router"]
    with tempfile.TemporaryDirectory(prefix="cathouse-bench-router-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        from cathouse_harness.local.data.hosts import free_loopback_address

        router = free_loopback_address()
        if router is None:
            raise SystemExit("no loopback address beyond 127.0.0.1 can listen on 5432 here")
        loop, plane, targets = _setup(home, router)
        kinds = ["direct", "pooled"] if plane.pgbouncer_available else ["direct"]
        results: dict[str, dict[str, float]] = {}
        try:
            for kind in kinds:
                results[f"psycopg connect, {kind}"] = interleaved(
                    sides, args.reps, lambda s, k=kind: _connect(targets[k][s])
                )
                results[f"query latency, {kind}"] = interleaved(
                    sides, args.query_reps, lambda s, k=kind: _query_latency(targets[k][s], args.queries)
                )
        finally:
            loop.run(plane.stop())
            loop.close()
    with recorded("hosts_router", args, began):
        print(f"{'measure':<26} {'listener':>10} {'router':>10}   router/listener")
        for name, row in results.items():
            cells = " ".join(
                f"{fmt(row[s]) if row[s] >= 1e-3 else f'{row[s] * 1e6:.0f} µs':>10}" for s in sides
            )
            print(f"{name:<26} {cells}   {row['router'] / row['listener']:6.2f}")
    print(json.dumps({"reps": args.reps, "queries": args.queries, "query_reps": args.query_reps,
                      "medians_s": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
