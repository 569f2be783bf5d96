"""One test session in a fresh process, as `pytest -p cathouse_harness` runs it before its
first test: `python benchmarks/_probe.py PROJECT_DIR RUN_ID`.

Prints `READY` as soon as the branch is usable, then one JSON line with the session's own
timings. `import_to_ready` starts before the harness is imported, so it counts every
import the harness causes (the interpreter's own start-up is measured by the caller).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402


def main() -> int:
    project, run_id = sys.argv[1], sys.argv[2]
    from harness.session import BranchSession
    from harness.settings import load_settings

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
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
