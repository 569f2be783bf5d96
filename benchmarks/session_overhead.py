"""What a test session and a test cost with the template reused and the server up.

    python benchmarks/session_overhead.py [--reps 5]

- hot session: `BranchSession.start()` / `finish()` repeated in this process (imports
  done, server up, template reused): the plugin's own overhead per session or worker;
- per-test isolation, three ways: the `db_session` fixture's work (engine, connection,
  outer transaction, savepoint session, one query, rollback), resetting the branch to
  its template (`reset_branch`), and a fresh branch per test (fork + delete).
Issue 5's targets: warm overhead under 1 s, `db_session` under 5 ms a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import EXAMPLE, fmt, home_env, stop_home, summary


def hot_sessions(home: Path, reps: int, project: Path = EXAMPLE) -> dict[str, Any]:
    from harness.session import BranchSession
    from harness.settings import load_settings

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


async def _db_session_once(pooled_url: str) -> None:
    # The same work as conftest_plugin.fixtures.db_session around one test.
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession

    from conftest_plugin.fixtures import _session_engine

    engine = _session_engine(pooled_url)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            await session.execute(text("SELECT 1"))
        finally:
            await session.close()
            if transaction.is_active:
                await transaction.rollback()
    await engine.dispose()


def isolation(home: Path, tests: int, resets: int) -> dict[str, Any]:
    from harness.session import BranchSession
    from harness.settings import load_settings

    with home_env(home):
        session = BranchSession(load_settings(EXAMPLE), run_id=f"bench-iso-{time.time_ns() % 10**6}")
        handle = session.start()
        try:
            per_test: list[float] = []
            for _ in range(tests):
                # Each test has its own event loop by default (function loop scope).
                started = time.perf_counter()
                asyncio.run(_db_session_once(str(handle.pooled_url)))
                per_test.append(time.perf_counter() - started)
            reset: list[float] = []
            for _ in range(resets):
                started = time.perf_counter()
                session.reset()
                reset.append(time.perf_counter() - started)
        finally:
            session.finish()
    return {"db_session": summary(per_test), "reset_branch": summary(reset)}


def print_result(hot: dict[str, Any], iso: dict[str, Any], fresh: float | None) -> None:
    print("issue 5: session and per-test overhead (medians)")
    print(f"  hot session start (template reused)   {fmt(hot['start']['median'])}")
    print(f"  hot session teardown                  {fmt(hot['teardown']['median'])}")
    print(f"  db_session per test                   {fmt(iso['db_session']['median'])}  (target < 5 ms)")
    print(f"  reset branch per test                 {fmt(iso['reset_branch']['median'])}")
    if fresh is not None:
        print(f"  fresh branch per test (fork+delete)   {fmt(fresh)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-home-sess-"))
    try:
        hot_sessions(home, 1)  # builds the template and starts the server
        hot = hot_sessions(home, args.reps)
        iso = isolation(home, 20, args.reps)
    finally:
        stop_home(home)
    print_result(hot, iso, None)
    print(json.dumps({"hot": hot, "isolation": iso}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
