"""Item 4: two runs given the same CATHOUSE_RUN_ID never delete each other's branches.

Run B's fork of `harness/<run>/main` fails (409: run A's branch has that name); its
cleanup after the failed create, its watchdog and an xdist controller's sweep must all
leave run A's branch alone: they delete only what carries their own run id *and* owner
token, and each run keeps its markers in a directory of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from cathouse_harness.branching.lifecycle import MARK, MARK_KIND, MARK_RUN
from cathouse_harness.cleanup.runs import marker_dir
from cathouse_harness.cleanup.sweep import sweep_run
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.neon.backend import connect_backend, open_client

from tests.security._support import minimal_project, plugin_env, run_pytest

WAITING_TEST = """
import os, pathlib, time

def test_a(neon_branch):
    gate = pathlib.Path(os.environ["GATE"])
    (gate / "a-ready").write_text(neon_branch.id)
    while not (gate / "release").exists():  # the outer test says when run B is done
        time.sleep(0.05)
"""
QUICK_TEST = "def test_b(neon_branch):\n    assert neon_branch.id\n"
FOREIGN_OWNER = "1-0123456789ab"  # another process's token


def _home() -> Path:
    return Path(os.environ["CATHOUSE_HARNESS_HOME"])


def _wait_for(path: Path, process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 120
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"run A never got its branch: {process.communicate()[0]}")
        time.sleep(0.05)
    return path.read_text()


def _branch_ids(project: Path, run_id: str) -> list[str]:
    settings = load_settings(project)
    backend = connect_backend(settings)

    async def listed() -> list[str]:
        async with open_client(backend) as client:
            found = await client.list_branches(backend.project_id)
            return [b.id for b in found if b.annotation.get(MARK_RUN) == run_id]

    return asyncio.run(listed())


def test_second_run_with_the_same_run_id_leaves_the_first_runs_branch(tmp_path: Path) -> None:
    run_id = f"same-{os.getpid()}"
    gate = tmp_path / "gate"
    gate.mkdir()
    project_a = minimal_project(tmp_path / "a", {"test_a.py": WAITING_TEST})
    project_b = minimal_project(tmp_path / "b", {"test_b.py": QUICK_TEST})
    run_a = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project_a, env=plugin_env(_home(), CATHOUSE_RUN_ID=run_id, GATE=str(gate)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        branch_a = _wait_for(gate / "a-ready", run_a)

        run_b = run_pytest(project_b, _home(), CATHOUSE_RUN_ID=run_id)

        assert run_b.returncode != 0  # its fork met run A's branch name
        assert branch_a in _branch_ids(project_a, run_id), run_b.stdout + run_b.stderr
    finally:
        (gate / "release").write_text("")
        out_a, _ = run_a.communicate(timeout=120)
    assert run_a.returncode == 0, out_a
    assert _branch_ids(project_a, run_id) == []


@contextmanager
def foreign_branch(settings: Settings, name: str, run_id: str) -> Iterator[str]:
    """A session branch of `run_id` made by another process (another owner token)."""
    backend = connect_backend(settings)
    annotation = {
        MARK: "1", MARK_RUN: run_id, MARK_KIND: "session", "cathouse-harness.owner": FOREIGN_OWNER,
    }

    async def create() -> str:
        async with open_client(backend) as client:
            main = await client.resolve_branch(backend.project_id, "main")
            created = await client.create_branch(
                backend.project_id, name=name, parent_id=main.id, annotation=annotation, wait=True,
            )
            return created.branch.id

    async def delete(branch_id: str) -> None:
        async with open_client(backend) as client:
            await client.delete_branch(backend.project_id, branch_id, wait=True, missing_ok=True)

    theirs = asyncio.run(create())
    try:
        yield theirs
    finally:
        asyncio.run(delete(theirs))


def test_sweep_leaves_the_same_run_ids_branch_of_another_owner(tmp_path: Path) -> None:
    run_id = f"sweep-{os.getpid()}"
    project = minimal_project(tmp_path / "p", {})
    settings = load_settings(project)

    with foreign_branch(settings, f"harness/{run_id}/gw7", run_id) as theirs:
        marker_dir(settings, run_id, "gw0").mkdir(parents=True)  # this run's own (empty) record
        sweep_run(settings, run_id)
        assert theirs in _branch_ids(project, run_id)


def test_watchdog_looks_up_a_name_but_deletes_only_its_own_run_and_owner(tmp_path: Path) -> None:
    from cathouse_harness.cleanup.watchdog import start_watchdog

    run_id = f"wd-{os.getpid()}"
    project = minimal_project(tmp_path / "p", {})
    settings = load_settings(project)
    backend = connect_backend(settings)
    name = f"harness/{run_id}/main"

    with foreign_branch(settings, name, run_id) as theirs:
        watchdog = start_watchdog(
            marker_dir(settings, run_id, "main"), api_host=backend.api_host,
            api_key=str(backend.api_key), ttl=timedelta(minutes=5),
            log_file=tmp_path / "watchdog.log", run_id=run_id,
        )
        watchdog.record_name(backend.project_id, name)  # our create of that name "lost its answer"
        watchdog.stop()
        assert theirs in _branch_ids(project, run_id)
