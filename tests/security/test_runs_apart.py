"""Item 4: two runs given the same CATHOUSE_RUN_ID never delete each other's branches.

Both pass (#25 part 5): the run whose fork of `harness/<run>/main` meets the other's
branch of that name (409) forks under the name with its own owner's suffix. Its cleanup
after the failed create, its watchdog and an xdist controller's sweep must all leave the
other run's branch alone: they delete only what carries their own run id *and* owner
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

from tests.security._support import minimal_project, plugin_env

# Each run says which branch it got and holds it until the outer test, which has seen
# both runs' branches by then, lets it end: both names are taken at once.
HOLDING_TEST = """
import os, pathlib, time

def test_hold(neon_branch):
    gate, me = pathlib.Path(os.environ["GATE"]), os.environ["ME"]
    (gate / f"{me}-branch").write_text(f"{neon_branch.id} {neon_branch.name}")
    while not (gate / f"{me}-release").exists():
        time.sleep(0.05)
"""
FOREIGN_OWNER = "1-0123456789ab"  # another process's token


def _home() -> Path:
    return Path(os.environ["CATHOUSE_HARNESS_HOME"])


def _wait_for(path: Path, process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 120
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run never got its branch: {process.communicate()[0]}")
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


def _start(project: Path, run_id: str, gate: Path, me: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=plugin_env(_home(), CATHOUSE_RUN_ID=run_id, GATE=str(gate), ME=me),
    )


def _finish(run: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = run.communicate(timeout=180)
    return run.returncode, out


def test_two_runs_with_the_same_run_id_at_once_both_pass_and_keep_apart(tmp_path: Path) -> None:
    """A CI matrix sharing one run id: both runs start together and hold their session
    branches at the same time, so one of them finds `harness/<run>/main` taken by the
    other's owner and forks under a name of its own. Run A ends first; run B's branch must
    outlive A's sweep, and each run's end deletes its own branch."""
    run_id = f"same-{os.getpid()}"
    gate = tmp_path / "gate"
    gate.mkdir()
    project_a = minimal_project(tmp_path / "a", {"test_hold.py": HOLDING_TEST})
    project_b = minimal_project(tmp_path / "b", {"test_hold.py": HOLDING_TEST})
    run_a = _start(project_a, run_id, gate, "a")
    run_b = _start(project_b, run_id, gate, "b")
    try:
        branch_a, name_a = _wait_for(gate / "a-branch", run_a).split()
        branch_b, name_b = _wait_for(gate / "b-branch", run_b).split()
        assert branch_a != branch_b
        assert sorted((name_a, name_b))[0] == f"harness/{run_id}/main"  # one kept the plain name
        assert {branch_a, branch_b} <= set(_branch_ids(project_a, run_id))

        (gate / "a-release").write_text("")
        code_a, out_a = _finish(run_a)
        assert code_a == 0, out_a
        assert _branch_ids(project_a, run_id) == [branch_b], out_a  # A deleted its own only
    finally:
        (gate / "a-release").write_text("")
        (gate / "b-release").write_text("")
        code_b, out_b = _finish(run_b)
        if run_a.returncode is None:
            run_a.kill()
            run_a.communicate()
    assert code_b == 0, out_b
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
