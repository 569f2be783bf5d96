"""One test session in a fresh process, as `pytest -p cathouse_harness` runs it before its
first test: `python benchmarks/_probe.py PROJECT_DIR RUN_ID`.

Prints `READY` as soon as the branch is usable, then one JSON line with the session's own
timings. pytest and pytest-asyncio are imported first, untimed: every test run has them
before any plugin of ours loads (and they bring asyncio, logging, dataclasses and the
like). `import_to_ready` then counts everything the harness adds: its plugin module,
every import that causes, and the session's start. The caller measures from spawn too.
"""

from __future__ import annotations

import time

import pytest  # noqa: F401  (pytest's own start-up, not ours)
import pytest_asyncio  # noqa: F401

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402

import pytest_cathouse_harness.plugin  # noqa: E402, F401  (loaded by every run with -p cathouse_harness)


def main() -> int:
    project, run_id = sys.argv[1], sys.argv[2]
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.session.branch_session import BranchSession

    session = BranchSession(load_settings(project), run_id=run_id)
    session.start()
    ready = time.perf_counter() - STARTED
    print("READY", flush=True)
    started = time.perf_counter()
    session.finish()
    teardown = time.perf_counter() - started
    report = session.report
    print(
        json.dumps(
            {
                "import_to_ready": ready,
                "teardown": teardown,
                "timings": report.timings,
                "api_calls": report.api_calls,
                "template_reused": report.template_reused,
                "migrated_services": report.migrated_services,
                "spare": report.spare,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
