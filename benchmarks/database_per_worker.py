"""What a database per xdist worker on one branch costs (issue 17's `-n 4` row).

    python benchmarks/database_per_worker.py [--workers 4] [--reps 5]

Forks one session branch of the Cat House example on a home of its own (the embedded
default, no latency profile), then times the workers' copies of its database three ways:
as the harness makes them (`cathouse_harness.xdist.worker_databases.copy_template`: through the
branch's endpoint, one after another, each on its own connection to the template), and
as the floor, `CREATE DATABASE … TEMPLATE` as the superuser of the branch's own instance
over its socket (`_common.instance_admin_dsn`), one after another and all at once.
Against it stand `workers - 1` more forks, 1.6 s each under the `neon` preset, one after
another under Neon's project lock.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from _common import EXAMPLE, add_results_option, fmt, home_env, instance_admin_dsn, stop_home, write_results
from neon_profile import settle


def measure(workers: int, reps: int) -> dict[str, float]:
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.session.branch_session import BranchSession

    home = Path(tempfile.mkdtemp(prefix="cathouse-db-per-worker-"))
    home.chmod(0o700)
    with home_env(home):
        session = BranchSession(load_settings(EXAMPLE), run_id="db-per-worker")
        try:
            handle = session.start()
            with psycopg.connect(str(handle.direct_url)) as connection:
                physical = connection.execute("SELECT current_database()").fetchone()[0]
            dsn = instance_admin_dsn(home, handle.id)  # running: the login above resumed it

            def copy(name: str) -> None:
                with psycopg.connect(dsn, autocommit=True) as connection:
                    connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{physical}"')

            def drop(names: list[str]) -> None:
                with psycopg.connect(dsn, autocommit=True) as connection:
                    for name in names:
                        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')

            from cathouse_harness.xdist.worker_databases import copy_template

            together, in_turn, harness = [], [], []
            for rep in range(reps):
                names = [f"cathouse_h{i}_{rep}" for i in range(workers)]
                started = time.perf_counter()
                for name in names:
                    copy_template(handle.direct_url, "cathouse", name, home / "copies.lock")
                harness.append(time.perf_counter() - started)
                names = [f"gw{i}_{rep}" for i in range(workers)]
                started = time.perf_counter()
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(copy, names))
                together.append(time.perf_counter() - started)
                drop(names)
                started = time.perf_counter()
                for name in names:
                    copy(name)
                in_turn.append(time.perf_counter() - started)
                drop(names)
        finally:
            session.finish()
            settle(home)  # its watchdog confirms the delete before the server stops
            stop_home(home)
            shutil.rmtree(home, ignore_errors=True)
    return {
        "together": statistics.median(together),
        "in_turn": statistics.median(in_turn),
        "harness": statistics.median(harness),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    add_results_option(parser, "database_per_worker")
    args = parser.parse_args()
    began = time.perf_counter()
    r = measure(args.workers, args.reps)
    print(f"{args.workers} copies at once: {r['together'] * 1000:.1f} ms; one after another: "
          f"{r['in_turn'] * 1000:.1f} ms ({r['in_turn'] * 1000 / args.workers:.1f} ms each); "
          f"as the harness makes them, through the endpoint: {r['harness'] * 1000:.1f} ms "
          f"({r['harness'] / r['in_turn']:.2f}x one after another on the instance); "
          f"medians of {args.reps}")
    if args.results:
        n = args.workers
        rows = [
            [f"{n} worker databases as the harness makes them (through the endpoint)", fmt(r["harness"]),
             f"{r['harness'] / r['in_turn']:.2f}x the same on the instance; median of {args.reps}"],
            [f"{n} worker databases on the instance directly, one after another", fmt(r["in_turn"]),
             f"{fmt(r['in_turn'] / n)} each"],
            [f"{n} worker databases on the instance directly, all at once", fmt(r["together"]), ""],
        ]
        path = write_results("database_per_worker", r, rows, began, workers=n, reps=args.reps)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
