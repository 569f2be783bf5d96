"""Under xdist the controller forks one branch for the run's workers and gives each a
database of its own on it (`cathouse_harness.xdist.broker`,
`cathouse_harness.xdist.worker_databases`), and deletes the branch at the end;
workers receive theirs through `cathouse_harness.xdist.handoff`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cathouse_harness.cleanup.runs import kept_marker
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.discovery import running_server
from cathouse_harness.session.branch_session import BranchSession
from cathouse_harness.xdist.broker import BranchBroker
from cathouse_harness.xdist.handoff import handoff_dir, wait_for_branch

from tests.plugin._support import (
    COMMIT_A_TABLE,
    branches_of_run,
    copy_example,
    delete_branch,
    run,
)

RECORDING = """
import os, pathlib, sys, psycopg, pytest

@pytest.mark.parametrize("n", range(8))
def test_record(neon_branch, migration_database_url, n):
    out = pathlib.Path(__file__).parent / "seen"
    out.mkdir(exist_ok=True)
    client = "cathouse_harness.neon.client" in sys.modules  # a worker needs no API client of its own
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with psycopg.connect(migration_database_url, autocommit=True) as connection:
        # what a worker commits, only that worker sees: 1 row per test of its own
        connection.execute("INSERT INTO auth.users (email) VALUES (%s)", (f"{worker}-{n}@x",))
        mine = connection.execute("SELECT count(*) FROM auth.users").fetchone()[0]
        others = connection.execute(
            "SELECT count(*) FROM auth.users WHERE email NOT LIKE %s", (f"{worker}-%",)
        ).fetchone()[0]
    (out / f"{worker}-{n}").write_text(
        f"{neon_branch.id} {neon_branch.name} {client} {neon_branch.database} {others}"
    )
    assert mine >= 1
"""


def test_each_worker_gets_a_database_of_its_own_on_one_branch_and_none_remain(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_workers=RECORDING)
    result = run(project, "xdb1", "-n", "2")
    result.assert_outcomes(passed=8)
    seen: dict[str, set[tuple[str, ...]]] = {}
    for path in (project.path / "seen").iterdir():
        seen.setdefault(path.name.split("-")[0], set()).add(tuple(path.read_text().split()))
    assert sorted(seen) == ["gw0", "gw1"]
    (gw0,), (gw1,) = seen["gw0"], seen["gw1"]  # one database per worker, for all its tests
    assert gw0[0] == gw1[0] and gw0[1] == gw1[1] == "harness/xdb1/workers"
    assert gw0[2:] == ("False", "cathouse_gw0", "0") and gw1[2:] == ("False", "cathouse_gw1", "0")
    result.stdout.fnmatch_lines(["*branch harness/xdb1/workers (br-*", "*handoff*", "*API calls *"])
    assert branches_of_run(project.path, "xdb1") == []


def test_worker_isolation_branch_gives_each_worker_a_branch_of_its_own(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_workers=RECORDING)
    monkeypatch.setenv("CATHOUSE_WORKER_ISOLATION", "branch")
    result = run(project, "xdb14", "-n", "2")
    result.assert_outcomes(passed=8)
    seen = {p.name.split("-")[0]: tuple(p.read_text().split()) for p in (project.path / "seen").iterdir()}
    assert seen["gw0"][1:] == ("harness/xdb14/gw0", "False", "cathouse", "0")
    assert seen["gw1"][1:] == ("harness/xdb14/gw1", "False", "cathouse", "0")
    assert seen["gw0"][0] != seen["gw1"][0]
    assert branches_of_run(project.path, "xdb14") == []


def test_a_branch_asked_for_by_name_is_forked_when_asked(project: pytest.Pytester) -> None:
    # nothing at collection says this test needs a branch: its worker asks at run time
    project.makepyfile(
        test_by_name="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_by_name(request, n):
    assert request.getfixturevalue("neon_branch").database.startswith("cathouse_gw")
"""
    )
    result = run(project, "xdb9", "-n", "2")
    result.assert_outcomes(passed=4)
    assert branches_of_run(project.path, "xdb9") == []


def test_a_worker_killed_mid_run_leaves_no_branch(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_crash="""
import os, signal

def test_crash(neon_branch, worker_id):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    )
    result = run(project, "xdb2", "-n", "2", "--max-worker-restart", "0")
    assert result.ret != 0 and "crashed" in result.stdout.str()
    # the controller deleted it before it ended: no watchdog needs to, no waiting here
    assert branches_of_run(project.path, "xdb2") == []


def test_sigint_under_xdist_leaves_no_branch(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_sleep="""
import time, pytest

@pytest.mark.parametrize("n", range(2))
def test_sleeps(n, neon_branch):
    time.sleep(60)
"""
    )
    env = {**os.environ, "CATHOUSE_RUN_ID": "xdb10"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q",
         "-n", "2"],
        cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not branches_of_run(project.path, "xdb10"):
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        time.sleep(0.2)
    assert branches_of_run(project.path, "xdb10") == ["harness/xdb10/workers"]
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the controller and its workers
    process.communicate(timeout=60)
    assert process.returncode == pytest.ExitCode.INTERRUPTED
    assert branches_of_run(project.path, "xdb10") == []


def test_no_fixture_under_xdist_makes_no_api_call(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "untouched-home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    project.makepyfile(
        test_plain="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_plain(n):
    assert n >= 0

@pytest.mark.skip(reason="a branch test that does not run asks for no branch")
def test_skipped(neon_branch):
    pass
"""
    )
    result = run(project, "xdb3", "-n", "2")
    result.assert_outcomes(passed=4, skipped=1)
    assert "cathouse-harness summary" not in result.stdout.str()
    # the embedded default's API is a server in this home: no home, no server, no call
    assert not home.exists() and running_server(home) is None


def test_a_failing_worker_keeps_the_branch_with_its_database(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_keep="""
import pytest

@pytest.mark.parametrize("n", range(8))
def test_fails_on_gw0(neon_branch, n, worker_id):
    assert worker_id != "gw0"
"""
    )
    result = run(project, "xdb4", "-n", "2", "--cathouse-keep-branch", "on-failure")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert branches_of_run(project.path, "xdb4") == ["harness/xdb4/workers"]
    result.stdout.fnmatch_lines([
        "*kept for inspection: harness/xdb4/workers (br-*) database cathouse_gw0 *",
        "*connect: psql \"$(cathouse-branch url 'harness/xdb4/workers' --database 'cathouse_gw0')\"",
    ])
    shown = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "url", "harness/xdb4/workers",
         "--database", "cathouse_gw0"],
        cwd=project.path, check=True, capture_output=True, text=True,
    )
    assert shown.stdout.split("?")[0].endswith("/cathouse_gw0")
    subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "down", "harness/xdb4/workers", "--quiet"],
        cwd=project.path, check=True, capture_output=True,
    )
    assert branches_of_run(project.path, "xdb4") == []


def test_resets_and_per_test_branches_in_the_workers(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_lazy=COMMIT_A_TABLE + """
import pytest

@pytest.mark.cathouse_reset
@pytest.mark.parametrize("n", range(4))
def test_reset(n, migration_database_url):
    assert commit_a_table(migration_database_url) is None

@pytest.mark.parametrize("n", range(4))
def test_own_branch(n, branch_per_test):
    assert commit_a_table(branch_per_test.migration_database_url) is None
"""
    )
    result = run(project, "xdb5", "-n", "2")
    result.assert_outcomes(passed=8)
    assert branches_of_run(project.path, "xdb5") == []


def test_without_template_reuse_each_worker_migrates_its_own_branch(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_migrated="""
import psycopg, pytest

@pytest.mark.parametrize("n", range(4))
def test_migrated(n, migration_database_url):
    with psycopg.connect(migration_database_url) as connection:
        assert connection.execute("SELECT to_regclass('auth.users')").fetchone()[0] is not None
"""
    )
    result = run(project, "xdb7", "-n", "2", "--cathouse-no-template-reuse")
    result.assert_outcomes(passed=4)
    assert branches_of_run(project.path, "xdb7") == []


def test_a_setup_error_reaches_the_worker_as_it_was(tmp_path: Path) -> None:
    settings = load_settings(copy_example(tmp_path / "project"), options={"parent_branch": "no-such"})
    broker = BranchBroker(settings, "xdb6")
    broker.start()
    try:
        with pytest.raises(ConfigError) as raised:
            wait_for_branch(handoff_dir(settings, "xdb6"), "gw0")
    finally:
        report = broker.close()
    assert "parent_branch" in str(raised.value) and "no-such" in str(raised.value)
    assert report is not None and report.branches == []


def test_a_setup_error_under_xdist_ends_the_run_with_its_line_and_no_internal_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_parent="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_needs_a_branch(n, neon_branch):
    pass
"""
    )
    monkeypatch.setenv("CATHOUSE_PARENT_BRANCH", "no-such")
    result = run(project, "xdb11", "-n", "2")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output
    # a configuration problem: the usage error's code, as without -n
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "Interrupted: cathouse-harness: parent_branch" in output and "'no-such'" in output
    assert branches_of_run(project.path, "xdb11") == []


def test_the_controller_forks_once_for_its_workers_and_keeps_the_branch_a_worker_kept(
    tmp_path: Path,
) -> None:
    project = copy_example(tmp_path / "project")
    session = BranchSession(load_settings(project), run_id="xdb8", worker="controller")
    try:
        session.setup()
        handles = [session.fork_worker(w) for w in ("gw0", "gw1", "gw2")]
        assert {h.id for h in handles} == {handles[0].id}
        assert [h.database for h in handles] == ["cathouse_gw0", "cathouse_gw1", "cathouse_gw2"]
        session.release_worker("gw0")  # its database goes with the branch, at the end
        assert branches_of_run(project, "xdb8") == ["harness/xdb8/workers"]
        kept_marker(session.settings, "xdb8", handles[1].id).write_text(handles[1].name)
    finally:
        session.finish()
    assert branches_of_run(project, "xdb8") == ["harness/xdb8/workers"]
    assert session.report.branches == [f"harness/xdb8/workers ({handles[0].id})"]
    delete_branch(project, handles[0].id)  # `down` takes a kept branch once its process is gone


def test_the_controller_deletes_the_workers_branch_when_nobody_kept_it(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "project")
    session = BranchSession(load_settings(project), run_id="xdb13", worker="controller")
    try:
        session.setup()
        for worker in ("gw0", "gw1"):
            session.fork_worker(worker)
            session.release_worker(worker)
    finally:
        session.finish()
    assert branches_of_run(project, "xdb13") == []


ENV_ONLY = """
import asyncio, os, pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

@pytest.mark.parametrize("n", range(4))
def test_app_reads_database_url(n):
    # what an app does at import: its own engine from DATABASE_URL, no harness fixture
    async def count_users():
        engine = create_async_engine(os.environ["DATABASE_URL"])
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text("select count(*) from auth.users"))).scalar_one()
        finally:
            await engine.dispose()
    assert asyncio.run(count_users()) == 0
"""


def test_usefixtures_neon_branch_gives_env_only_tests_their_branch(project: pytest.Pytester) -> None:
    """Tests that use no harness fixture and only read DATABASE_URL (an app configured from
    the environment) get the worker's branch when the project lists `neon_branch` in
    pytest's `usefixtures` ini option (docs/fixtures.md "Fixtures"); without it they see
    the placeholder address."""
    project.makepyfile(test_env_only=ENV_ONLY)
    result = run(project, "xdb11", "-n", "2", "-o", "usefixtures=neon_branch")
    result.assert_outcomes(passed=4)
    assert branches_of_run(project.path, "xdb11") == []
    result = run(project, "xdb12", "-n", "2")
    result.assert_outcomes(failed=4)
    assert result.stdout.str().count('add usefixtures = ["neon_branch"]') == 4  # under each failure


def test_a_copy_held_up_by_a_connection_to_the_template_fails_in_one_line(tmp_path: Path) -> None:
    import psycopg
    from cathouse_harness.errors import WorkerDatabaseError

    project = copy_example(tmp_path / "project")
    session = BranchSession(load_settings(project), run_id="xdb15", worker="controller")
    try:
        session.setup()
        first = session.fork_worker("gw0")
        template_url = str(first.direct_url).replace("/cathouse_gw0?", "/cathouse?")
        # someone on the branch's own database
        with psycopg.connect(template_url), pytest.raises(WorkerDatabaseError) as raised:
            session.fork_worker("gw1")
        line = str(raised.value)
        assert "\n" not in line and "cathouse_gw1" in line and 'worker_isolation = "branch"' in line
        assert first.direct_url.reveal().split("@")[0].split(":")[-1] not in line  # no password
        assert session.fork_worker("gw2").database == "cathouse_gw2"  # once it is gone, it works
    finally:
        session.finish()
    assert branches_of_run(project, "xdb15") == []
