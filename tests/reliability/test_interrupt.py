"""Ctrl-C while the template's migration runs a long statement: the run ends long before
the statement would have, and leaves no branch and no process behind (issue 26, part 4).

Ctrl-C is SIGINT to the whole process group, as a terminal sends it (xdist's workers
too). The bound is generous on purpose (this is no benchmark): the statement sleeps
`SLEEP` seconds, the run must be gone in under half of that; the figure is printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import pytest
from cathouse_harness.branching.lifecycle import MARK_RUN

from tests.reliability._cases import TEST_FILE, add_revision
from tests.reliability._support import LocalNeon, make_project, start_plugin_run, wait_for

SLEEP = 60
BOUND = SLEEP / 2
# the watchdog's bound on what a dead run leaves (the fault matrix's)
WATCHDOG_DEADLINE = 10.0


def _sleeping(neon: LocalNeon) -> bool:
    """The template's migration is inside its pg_sleep."""
    building = [b for b in neon.branches() if str(b["name"]).endswith(".building")]
    if not building or building[0].get("current_state") != "ready":
        return False

    async def busy() -> bool:
        conn = await asyncpg.connect(neon.direct_url(str(building[0]["id"])))
        try:
            return bool(await conn.fetchval(
                f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep({SLEEP})%' "
                "AND pid <> pg_backend_pid()"
            ))
        finally:
            await conn.close()

    return asyncio.run(busy())


def _processes_of(run_id: str) -> list[str]:
    """Processes that carry this run's id in their environment (pytest, its xdist
    workers, its watchdog): the local server and its PostgreSQL were started before."""
    found = []
    marker = f"CATHOUSE_RUN_ID={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{entry.name}: {command.decode(errors='replace')}")
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


# with a mapping, the branch is made before the conftests load (before pytest is
# configured) and the template's migrations run in a Python process of their own
# (cathouse_harness.migrate.in_child)
MAPPING = '\n[tool.cathouse_harness.env]\nAPP_DATABASE_URL = "{url}"\n'


@pytest.mark.parametrize("when", ["at the fixture", "before the conftests"])
def test_ctrl_c_under_xdist_during_a_slow_migration(neon: LocalNeon, tmp_path: Path, when: str) -> None:
    # without xdist the same case is the fault matrix's "SIGINT during migration"
    xdist = ["-n", "2"]
    project = make_project(tmp_path / "project", {"test_app.py": TEST_FILE})
    add_revision(project, "5eeb5eeb5eeb", f"SELECT pg_sleep({SLEEP})", "a slow migration")
    if when == "before the conftests":
        pyproject = project / "pyproject.toml"
        pyproject.write_text(pyproject.read_text() + MAPPING)
    run_id = "ctrl-c-xdist" if when == "at the fixture" else "ctrl-c-xdist-early"
    process = start_plugin_run(project, neon.home, run_id, *xdist)
    try:
        wait_for(lambda: process.poll() is not None or _sleeping(neon), 90, "the migration's sleep",
                 interval=0.1)
        assert process.poll() is None, process.communicate()[0]
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
        out, _ = process.communicate(timeout=SLEEP * 2)
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    print(f"\nCtrl-C under -n 2, branch {when}: pytest exited {took:.2f} s after SIGINT")
    assert process.returncode == 2, out  # pytest's "interrupted"
    assert "Traceback" not in out, out
    assert took < BOUND, f"exit {took:.1f} s after Ctrl-C: it waited for the statement\n{out}"

    def left() -> list[str]:
        return [str(b["name"]) for b in neon.branches()
                if (b.get("annotation") or {}).get(MARK_RUN) == run_id]

    # the half-built template goes with the run; the watchdog is only the net
    wait_for(lambda: not left(), WATCHDOG_DEADLINE, f"no branch of the run (left: {left()})")
    wait_for(lambda: not _processes_of(run_id), WATCHDOG_DEADLINE,
             f"no process of the run (left: {_processes_of(run_id)})")


# Counts the full collections that follow the session, and says at exit whether the
# heap was frozen. Registered at import, so its atexit handler runs after the plugin's.
COUNTING_CONFTEST = '''
import atexit
import gc

after_session = []


def _count(phase, info):
    if phase == "start" and info["generation"] == 2:
        after_session.append(1)


def pytest_sessionfinish(session):
    gc.disable()  # only the collections someone asks for from here
    after_session.clear()
    gc.callbacks.append(_count)


@atexit.register
def _report():
    print(f"full collections after the session: {len(after_session)}; "
          f"frozen at exit: {gc.get_freeze_count() > 0}")
'''


@pytest.mark.parametrize("interrupted", [True, False])
def test_an_interrupted_run_skips_the_last_garbage_collections(
    tmp_path: Path, interrupted: bool
) -> None:
    """What most of an interrupted process's exit took (pytest's search for unraisable
    exceptions and the interpreter's last pass); an ordinary end keeps both."""
    project = make_project(tmp_path / "project", {
        "conftest.py": COUNTING_CONFTEST,
        "test_stop.py": f"def test_stop():\n    if {interrupted}:\n        raise KeyboardInterrupt\n",
    })
    out, _ = start_plugin_run(project, tmp_path / "home", "quick-exit").communicate(timeout=120)
    if interrupted:
        assert "full collections after the session: 0; frozen at exit: True" in out, out
        # stopped, not green: the hint for a run whose tests all ran without a branch
        # would send the reader to configure what is not wrong
        assert "no test used a branch" not in out, out
    else:
        assert "frozen at exit: False" in out and "after the session: 0;" not in out, out
