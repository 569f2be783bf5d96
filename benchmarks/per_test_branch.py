"""A branch per test (`@pytest.mark.cathouse_branch_per_test`), against the raw copy and
pytest-postgresql's per-test database clone, on the same PostgreSQL in one process.

    python benchmarks/per_test_branch.py [--reps 30]

Three ways to give one test a database of its own, cloned from the migrated template,
timed as a test waits for them (its setup plus its teardown), interleaved rep by rep:

- raw: `CREATE DATABASE … TEMPLATE <template> STRATEGY FILE_COPY` and `DROP DATABASE`
  as the superuser (the floor: what any tool must at least do), in the instance of the
  session's branch (a fork of the same migrated template, the same PostgreSQL), over its
  socket (`_common.instance_admin_dsn`);
- harness: `BranchSession.fork_for_test()` + `drop_test_branch()` (what the marker does:
  a fork through the API, answered once its copy is ready; a delete that does not wait);
- pytest-postgresql: `DatabaseJanitor(template_dbname=<template>)` `init()` + `drop()`
  (its `postgresql_noproc` + `load` style of per-test database) in that same instance,
  when installed (`pip install pytest-postgresql`).

A per-test branch is a PostgreSQL instance of its own (#24): a fork of the template's
instance, where the other two copy a database inside one running server.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from _common import EXAMPLE, add_results_option, home_env, instance_admin_dsn, recorded, stop_home, summary


def _raw_copy(loop: asyncio.AbstractEventLoop, admin: Any, source: str) -> float:
    """One copy and drop on an open superuser connection: no connect in the floor."""

    async def run() -> float:
        name = f"bench_pt_{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY FILE_COPY')
        await admin.execute(f'DROP DATABASE "{name}"')
        return time.perf_counter() - started

    return loop.run_until_complete(run())


def _janitor(dsn: str) -> Any:
    try:
        from pytest_postgresql.janitor import DatabaseJanitor
    except ImportError:
        return None
    parts = urlsplit(dsn)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    password = unquote(parts.password or "")

    def clone(source: str) -> float:
        janitor = DatabaseJanitor(
            user=parts.username or "postgres", host=query["host"], port=query["port"],
            version=18, dbname=f"bench_ppg_{uuid.uuid4().hex[:8]}", template_dbname=source,
            password=password,
        )
        started = time.perf_counter()
        janitor.init()
        janitor.drop()
        return time.perf_counter() - started

    return clone


def measure(home: Path, reps: int) -> dict[str, Any]:
    """Per-test cost of the three ways (see the module's text), `reps` times each."""
    import asyncpg
    import psycopg
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.session.branch_session import BranchSession

    with home_env(home):
        session = BranchSession(load_settings(EXAMPLE), run_id=f"bench-pt-{time.time_ns() % 10**6}")
        handle = session.start()
        try:
            # a login resumes the session branch's instance (a fork may have suspended
            # it); its database's name inside it is the template's copy
            with psycopg.connect(handle.direct_url.reveal()) as connection:
                source = connection.execute("SELECT current_database()").fetchone()[0]
            dsn = instance_admin_dsn(home, handle.id)
            clone = _janitor(dsn)
            loop = asyncio.new_event_loop()
            admin = loop.run_until_complete(asyncpg.connect(dsn))
            raw: list[float] = []
            harness: list[float] = []
            ppg: list[float] = []
            for _ in range(reps):
                raw.append(_raw_copy(loop, admin, source))
                started = time.perf_counter()
                branch = session.fork_for_test()
                session.drop_test_branch(branch)
                harness.append(time.perf_counter() - started)
                if clone is not None:
                    ppg.append(clone(source))
            loop.run_until_complete(admin.close())
            loop.close()
        finally:
            session.finish()
    result: dict[str, Any] = {"raw": summary(raw), "harness": summary(harness)}
    result["harness_vs_raw"] = result["harness"]["median"] / result["raw"]["median"]
    if ppg:
        result["pytest_postgresql"] = summary(ppg)
        result["pytest_postgresql_vs_raw"] = result["pytest_postgresql"]["median"] / result["raw"]["median"]
    return result


def print_result(result: dict[str, Any]) -> None:
    def ms(key: str) -> str:
        return f"{result[key]['median'] * 1000:.1f} ms (min {result[key]['min'] * 1000:.1f})"

    print("issue 17: a branch per test (setup + teardown as the test waits; medians)")
    print(f"  raw CREATE DATABASE … TEMPLATE + DROP      {ms('raw')}")
    print(f"  cathouse_branch_per_test (fork + drop)     {ms('harness')}  "
          f"{result['harness_vs_raw']:.2f}x raw (target <= 2x)")
    if "pytest_postgresql" in result:
        print(f"  pytest-postgresql DatabaseJanitor clone    {ms('pytest_postgresql')}  "
              f"{result['pytest_postgresql_vs_raw']:.2f}x raw")
    else:
        print("  pytest-postgresql: not installed (pip install pytest-postgresql)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    add_results_option(parser, "per_test_branch")
    args = parser.parse_args()
    began = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-home-pt-"))
    try:
        result = measure(home, args.reps)
        with recorded("per_test_branch", args, began):
            print_result(result)
    finally:
        stop_home(home)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
