"""What the connection guard adds to a connect: guarded against unguarded, same process.

    python benchmarks/connection_guard.py [--connects 40] [--reps 9] [--checks 20000]

An in-memory embedded PostgreSQL stands in for the session's branch. For each driver
(psycopg, psycopg2, asyncpg, SQLAlchemy on asyncpg), a round of `--connects` connects and
closes to it runs with the plugin's policy installed (`BranchOnly`, the branch's two
endpoints and an `allow_connections` entry) and without; rounds alternate (the side that
goes first alternates too), and the ratio is of medians per connect. The check alone (a
connect's parameters read and judged, no socket) is timed over `--checks` calls, to show
the absolute cost that the ratio hides in the noise of a real connect.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from _common import (  # (also puts the repository on sys.path)
    add_results_option,
    bench_plane,
    interleaved,
    recorded,
)
from cathouse_harness.db import guard


def _connectors(url: str) -> dict[str, Callable[[], None]]:
    import asyncpg
    import psycopg
    import psycopg2
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    def with_psycopg() -> None:
        psycopg.connect(url).close()

    def with_psycopg2() -> None:
        psycopg2.connect(url).close()

    def with_asyncpg() -> None:
        async def once() -> None:
            await (await asyncpg.connect(url)).close()

        asyncio.run(once())

    def with_sqlalchemy() -> None:
        async def once() -> None:
            engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"),
                                         poolclass=NullPool)
            async with engine.connect():
                pass
            await engine.dispose()

        asyncio.run(once())

    return {"psycopg": with_psycopg, "psycopg2": with_psycopg2, "asyncpg": with_asyncpg,
            "sqlalchemy+asyncpg": with_sqlalchemy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=40)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--checks", type=int, default=20000)
    add_results_option(parser, "connection_guard")
    args = parser.parse_args()

    with recorded("connection_guard", args, time.perf_counter()), tempfile.TemporaryDirectory() as tmp:
        loop, plane, password = bench_plane(Path(tmp) / "postgres", "bench")
        try:
            port = int(parse_qs(urlsplit(plane.admin_dsn()).query).get("port", ["5432"])[0])
            url = f"postgresql://bench:{password}@127.0.0.1:{port}/bench"
            policy = guard.BranchOnly([("127.0.0.1", port), ("127.0.0.2", 6432)],
                                      [guard.parse_allowed("reports.internal:5433/r")])
            print(f"{args.reps} alternating rounds of {args.connects} connects each, "
                  "median per connect:")
            for name, connect in _connectors(url).items():
                connect()  # imports and first-use costs outside the rounds

                def measure(side: str, connect: Callable[[], None] = connect) -> float:
                    if side == "guarded":
                        guard.install(policy)
                    try:
                        started = time.perf_counter()
                        for _ in range(args.connects):
                            connect()
                        return (time.perf_counter() - started) / args.connects
                    finally:
                        if side == "guarded":
                            guard.uninstall(policy)

                medians = interleaved(["unguarded", "guarded"], args.reps, measure)
                bare, guarded = medians["unguarded"], medians["guarded"]
                print(f"  {name:20} unguarded {bare * 1000:6.2f} ms  guarded {guarded * 1000:6.2f} ms"
                      f"  guarded/unguarded {guarded / bare:.3f}")
            params = {"host": "127.0.0.1", "port": str(port), "dbname": "bench", "user": "bench"}
            with guard.guarded_by(policy):
                started = time.perf_counter()
                for _ in range(args.checks):
                    guard._check_libpq_params(params)
                per_check = (time.perf_counter() - started) / args.checks
            print(f"  the check alone (psycopg's parameters, allowed): {per_check * 1e6:.2f} µs per connect")
        finally:
            loop.run(plane.stop())
            loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
