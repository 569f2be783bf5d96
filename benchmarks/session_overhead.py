"""What a test session and a test cost with the template reused and the server up.

    python benchmarks/session_overhead.py [--reps 5]

- hot session: `BranchSession.start()` / `finish()` repeated in this process (imports
  done, server up, template reused): the plugin's own overhead per session or worker;
- per-test isolation, three ways: the `db_session` fixture's work (connection, outer
  transaction, savepoint session, one query, rollback; with a loop per test, pytest-asyncio's
  default, and with one loop for all tests, where a connection is reused), resetting the branch to
  its template (`reset_branch`), and a fresh branch per test (fork + delete).
Issue 5's targets: warm overhead under 1 s, `db_session` under 5 ms a test (checked on the
reused connection: a fresh TLS + SCRAM connection through the proxy and PgBouncer alone
costs more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import EXAMPLE, add_results_option, fmt, home_env, recorded, stop_home, summary
from cathouse_harness.db.rollback import KeptConnections

# db_session's engines and kept connections, as the plugin holds them for a run
CONNECTIONS = KeptConnections()


def hot_sessions(home: Path, reps: int, project: Path = EXAMPLE) -> dict[str, Any]:
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.session.branch_session import BranchSession

    start: list[float] = []
    finish: list[float] = []
    steps: dict[str, list[float]] = {}
    calls: list[int] = []
    template_id = None
    with home_env(home):
        settings = load_settings(project)
        for i in range(reps):
            session = BranchSession(settings, run_id=f"bench-hot-{i}-{time.time_ns() % 10**6}")
            started = time.perf_counter()
            session.start()
            start.append(time.perf_counter() - started)
            template_id = session.template_id
            started = time.perf_counter()
            session.finish()
            finish.append(time.perf_counter() - started)
            for step, seconds in session.report.timings.items():
                steps.setdefault(step, []).append(seconds)
            calls.append(session.report.api_calls)
    return {
        "start": summary(start),
        "teardown": summary(finish),
        "steps": {k: summary(v) for k, v in steps.items()},
        "api_calls": max(calls) if calls else 0,
        "template_id": template_id,
    }


async def _db_session_tests(pooled_url: str, tests: int, keep: bool) -> list[float]:
    """`tests` tests on this loop, each timed around exactly the db_session fixture's work
    (`rolled_back_session`) plus one `SELECT 1` through the session (so the connection,
    transaction and savepoint are really used)."""
    from sqlalchemy import text

    times: list[float] = []
    for _ in range(tests):
        started = time.perf_counter()
        async with CONNECTIONS.rolled_back_session(pooled_url, keep=keep) as session:
            await session.execute(text("SELECT 1"))
        times.append(time.perf_counter() - started)
    return times


async def _bare_queries(pooled_url: str, tests: int) -> list[float]:
    """The same `SELECT 1` without db_session, on one open connection (its own
    transaction, ended after the query): what the fixture's figure is compared with."""
    from cathouse_harness.db.rollback import session_engine
    from sqlalchemy import text

    engine = session_engine(pooled_url)
    times: list[float] = []
    async with engine.connect() as connection:
        for _ in range(tests):
            started = time.perf_counter()
            await connection.execute(text("SELECT 1"))
            await connection.rollback()
            times.append(time.perf_counter() - started)
    await engine.dispose()
    return times


def _close_kept() -> None:
    CONNECTIONS.close_all()


def isolation(home: Path, tests: int, resets: int) -> dict[str, Any]:
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.session.branch_session import BranchSession

    with home_env(home):
        session = BranchSession(load_settings(EXAMPLE), run_id=f"bench-iso-{time.time_ns() % 10**6}")
        handle = session.start()
        try:
            url = str(handle.pooled_url)
            # pytest-asyncio's default: a loop per test, so a connection per test (the
            # engine and its dialect set-up are shared by the process).
            per_test: list[float] = []
            for _ in range(tests):
                per_test.extend(asyncio.run(_db_session_tests(url, 1, keep=False)))
            # Tests on one long-lived loop (loop scope session/module): one connection, a
            # transaction per test. The first test connects; the median is the steady state.
            loop = asyncio.new_event_loop()
            try:
                shared = loop.run_until_complete(_db_session_tests(url, tests, keep=True))
                bare = loop.run_until_complete(_bare_queries(url, tests))
            finally:
                _close_kept()  # the loop is not running here, so this closes it cleanly
                loop.close()
            reset: list[float] = []
            for _ in range(resets):
                started = time.perf_counter()
                session.reset()
                reset.append(time.perf_counter() - started)
        finally:
            session.finish()
    return {
        "db_session": summary(per_test),
        "db_session_shared_loop": summary(shared),
        "bare_select_1": summary(bare),
        "reset_branch": summary(reset),
    }


def print_result(hot: dict[str, Any], iso: dict[str, Any], fresh: float | None) -> None:
    print("issue 5: session and per-test overhead (medians)")
    print(f"  hot session start (template reused)   {fmt(hot['start']['median'])}")
    print(f"  hot session teardown                  {fmt(hot['teardown']['median'])}")
    print(f"  db_session per test, loop per test    {fmt(iso['db_session']['median'])}  (connects each test)")
    shared = iso["db_session_shared_loop"]["median"]
    print(f"  db_session per test, session loop     {fmt(shared)}  (target < 5 ms: one connection reused)")
    bare = iso["bare_select_1"]["median"]
    print(f"  the same SELECT 1 without db_session  {fmt(bare)}  (fixture adds {fmt(shared - bare)})")
    print(f"  reset branch per test                 {fmt(iso['reset_branch']['median'])}")
    if fresh is not None:
        print(f"  fresh branch per test (fork+delete)   {fmt(fresh)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    add_results_option(parser, "session_overhead")
    args = parser.parse_args()
    began = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-home-sess-"))
    try:
        hot_sessions(home, 1)  # builds the template and starts the server
        hot = hot_sessions(home, args.reps)
        iso = isolation(home, 20, args.reps)
    finally:
        stop_home(home)
    with recorded("session_overhead", args, began):
        print_result(hot, iso, None)
    print(json.dumps({"hot": hot, "isolation": iso}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
