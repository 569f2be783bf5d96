"""What the names-mode router costs against an endpoint's own listener (#15 part 1).

    python benchmarks/hosts_router.py [--reps 60] [--queries 500] [--query-reps 9]

A local server on a temporary home in names mode (`CATHOUSE_LOCAL_HOSTS=names`, the
router on a loopback address of its own), and one branch forked from the example's
parent with the example's role and database: a PostgreSQL instance of its own
(#24) behind the data plane's listeners (`cathouse_harness.local.data`). The client
(psycopg, libpq) in this process reaches the branch's endpoint two ways, with the
branch's own role and verify-full against the home's CA:

- `listener`: the endpoint's own listener (127.0.0.1 and its port, from the server's
  state file), where the relay does the TLS handshake itself, as with an endpoint's own
  address on 5432;
- `router`: the URL the API gives (`host=<endpoint-id>.local.localhost`) with
  `hostaddr=<router>`: the router does the handshake, reads the server name (SNI) and
  hands the connection to the same relay.

Connect time (direct, and pooled through the instance's PgBouncer when installed) and
per-query latency (`SELECT 1` on an open connection), medians, interleaved so the
machine's noise falls on both sides alike; ratio router / listener.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    EXAMPLE,
    add_results_option,
    connect_query_parser,
    fmt,
    fork_session,
    home_env,
    interleaved,
    recorded,
    stop_home,
)


def _ports(home: Path, endpoint_id: str) -> tuple[int, int]:
    """The endpoint's (direct, pooled) listener ports, as the server's state file has
    them (it is written a few milliseconds after a change)."""
    from cathouse_harness.local.control.state import load_state
    from cathouse_harness.support.polling import Backoff, wait_until

    found: list[tuple[int, int]] = []

    def written() -> bool:
        state = load_state(home)
        ep = state.endpoints.get(endpoint_id) if state is not None else None
        if ep is not None and ep.direct_port and ep.pooled_port:
            found.append((ep.direct_port, ep.pooled_port))
        return bool(found)

    if not wait_until(written, timeout=10, backoff=Backoff(0.01, most=0.2)):
        raise SystemExit(f"endpoint {endpoint_id}'s ports are not in {home}'s state file")
    return found[0]


async def _fork(home: Path) -> tuple[Any, Any]:
    """A branch of the example's parent (kept until the end), and the client's backend."""
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.neon.backend import connect_backend, open_client

    settings = load_settings(EXAMPLE)
    backend = connect_backend(settings)
    async with open_client(backend) as client:
        parent_id = (await client.resolve_branch(backend.project_id, settings.parent_branch)).id
        handle = await fork_session(client, backend.project_id, parent_id, settings,
                                    "harness/bench-router/1", "bench-router")
    return handle, backend


async def _delete(backend: Any, branch_id: str) -> None:
    from cathouse_harness.branching.lifecycle import delete_owned_branch
    from cathouse_harness.neon.backend import open_client

    async with open_client(backend) as client:
        await delete_owned_branch(client, backend.project_id, branch_id)


def _targets(home: Path, handle: Any, router: str) -> dict[str, dict[str, dict[str, Any]]]:
    from psycopg.conninfo import conninfo_to_dict

    targets: dict[str, dict[str, dict[str, Any]]] = {}
    ports = dict(zip(("direct", "pooled"), _ports(home, handle.endpoint_id), strict=True))
    for kind, url in (("direct", handle.direct_url), ("pooled", handle.pooled_url)):
        # PgBouncer in transaction mode: no server-side prepared statements
        params = {**conninfo_to_dict(url.reveal()), "autocommit": True, "prepare_threshold": None}
        targets[kind] = {
            "listener": {**params, "host": "127.0.0.1", "port": ports[kind]},
            "router": {**params, "hostaddr": router, "port": 5432},
        }
    return targets


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
    from cathouse_harness.local.compute.users import remove_home_user
    from cathouse_harness.local.data.hosts import free_loopback_address
    from cathouse_harness.local.data.names import HOSTS_VAR, ROUTER_VAR
    from cathouse_harness.local.data.pgbouncer import find_pgbouncer
    from cathouse_harness.support.env import overridden

    router = free_loopback_address()
    if router is None:
        raise SystemExit("no loopback address beyond 127.0.0.1 can listen on 5432 here")
    names = {HOSTS_VAR: "names", ROUTER_VAR: router}
    kinds = ["direct", "pooled"] if find_pgbouncer() is not None else ["direct"]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cathouse-bench-router-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        try:
            with home_env(home), overridden(names):  # the server starts in names mode
                handle, backend = asyncio.run(_fork(home))
                targets = _targets(home, handle, router)
                for kind in kinds:
                    results[f"psycopg connect, {kind}"] = interleaved(
                        sides, args.reps, lambda s, k=kind: _connect(targets[k][s])
                    )
                    results[f"query latency, {kind}"] = interleaved(
                        sides, args.query_reps, lambda s, k=kind: _query_latency(targets[k][s], args.queries)
                    )
                asyncio.run(_delete(backend, handle.id))
        finally:
            stop_home(home)
            remove_home_user(home)
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
