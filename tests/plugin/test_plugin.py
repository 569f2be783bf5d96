"""The plugin end to end, in pytester subprocesses, on the embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugin._support import COMMIT_A_TABLE, branches_of_run, run

BRANCH_TEST = """
import os

def test_branch(neon_branch, database_url, migration_database_url):
    assert neon_branch.name.startswith("harness/")
    assert database_url.startswith("postgresql+asyncpg://")
    assert migration_database_url.startswith("postgresql://")
    assert os.environ["DATABASE_URL"] == database_url
    assert os.environ["MIGRATION_DATABASE_URL"] == migration_database_url
"""


def test_the_summary_prints_a_kept_branch_s_schema_diff_on_request(project: pytest.Pytester) -> None:
    """`--cathouse-diff-kept`: what the failed run changed in the schema, printed under the
    kept branch; without it, only the command that prints it."""
    project.makepyfile(test_fail=(
        "import psycopg\n\n"
        "def test_fails(neon_branch):\n"
        "    with psycopg.connect(str(neon_branch.direct_url), autocommit=True) as session:\n"
        "        session.execute('CREATE TABLE left_by_the_failure (paws int)')\n"
        "    assert False\n"
    ))
    result = run(project, "diffk", "--cathouse-keep-branch", "on-failure", "--cathouse-diff-kept")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    lines = text.splitlines()
    at = lines.index("  schema changes since its template: cathouse-branch diff 'harness/diffk/main'")
    printed = "\n".join(line for line in lines[at + 1:] if line.startswith("    "))
    assert "left_by_the_failure" in printed and "paws" in printed
    subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "down", "harness/diffk/main", "--quiet"],
        cwd=project.path, check=True, capture_output=True,
    )
    assert branches_of_run(project.path, "diffk") == []


def test_passing_session_leaves_no_branch(project: pytest.Pytester) -> None:
    project.makepyfile(test_one=BRANCH_TEST)
    result = run(project, "pass1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*cathouse-harness summary (run pass1)*", "*API calls*"])
    assert branches_of_run(project.path, "pass1") == []


def test_failing_session_leaves_no_branch(project: pytest.Pytester) -> None:
    project.makepyfile(test_fail=BRANCH_TEST + "\n\ndef test_fails(neon_branch):\n    assert False\n")
    result = run(project, "fail1")
    result.assert_outcomes(passed=1, failed=1)
    assert branches_of_run(project.path, "fail1") == []


def test_failed_session_branch_kept_on_request_without_password(project: pytest.Pytester) -> None:
    project.makepyfile(test_fail="def test_fails(neon_branch):\n    assert False\n")
    result = run(project, "keep1", "--cathouse-keep-branch", "on-failure")
    result.assert_outcomes(failed=1)
    assert branches_of_run(project.path, "keep1") == ["harness/keep1/main"]
    text = result.stdout.str()
    assert "kept for inspection: harness/keep1/main" in text
    connect = [line for line in text.splitlines() if "connect: psql" in line]
    assert connect == ['  connect: psql "$(cathouse-branch url \'harness/keep1/main\')"']
    assert "  schema changes since its template: cathouse-branch diff 'harness/keep1/main'" in text
    diff = subprocess.run(  # the test changed no schema: nothing against its template
        [sys.executable, "-m", "cathouse_harness", "diff", "harness/keep1/main", "--json", "--quiet"],
        cwd=project.path, check=True, capture_output=True, text=True,
    ).stdout
    assert json.loads(diff)["changed"] is False
    assert ":***@" in text  # the URL shown beside it is redacted
    url = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "url", "harness/keep1/main", "--quiet"],
        cwd=project.path, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert url.startswith("postgresql://") and url.split("@")[0].split(":")[-1] not in text
    subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "down", "harness/keep1/main", "--quiet"],
        cwd=project.path, check=True, capture_output=True,
    )
    assert branches_of_run(project.path, "keep1") == []


def test_plugin_is_inert_without_fixtures(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "untouched-home"
    project.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    result = run(project, "inert1")
    result.assert_outcomes(passed=1)
    assert not home.exists(), "the plugin started something for a suite that used none of it"
    assert "cathouse-harness summary" not in result.stdout.str()


def test_config_error_is_one_line_without_traceback(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_one=BRANCH_TEST)
    monkeypatch.setenv("CATHOUSE_BRANCH_TTL", "forever")
    result = run(project, "cfg1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "cathouse-harness" in line]
    assert errors == [
        "ERROR: cathouse-harness: branch_ttl (from environment CATHOUSE_BRANCH_TTL): 'forever' is "
        "not a duration (use a number with s, m, h or d, e.g. '15m')"
    ]
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_shell_database_url_never_reaches_tests(
    project: pytest.Pytester, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_env="""
import os

def test_sees_branch(neon_branch):
    assert os.environ["DATABASE_URL"] == neon_branch.database_url
    assert os.environ["MIGRATION_DATABASE_URL"] == neon_branch.migration_database_url
"""
    )
    (project.path / ".env").write_text(f"DATABASE_URL={fresh_database_url}\n")
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    result = run(project, "env1")
    result.assert_outcomes(passed=1)


def test_db_session_rolls_back_across_tests(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_rollback="""
from sqlalchemy import text

async def test_a_writes_and_commits(db_session):
    await db_session.execute(text("INSERT INTO auth.users (email) VALUES ('a@x')"))
    await db_session.commit()
    assert (await db_session.execute(text("SELECT count(*) FROM auth.users"))).scalar() == 1

async def test_b_sees_nothing(db_session):
    assert (await db_session.execute(text("SELECT count(*) FROM auth.users"))).scalar() == 0
"""
    )
    result = run(project, "rb1")
    result.assert_outcomes(passed=2)


def test_template_reused_then_rebuilt_after_a_migration_change(project: pytest.Pytester) -> None:
    project.makepyfile(test_one=BRANCH_TEST)
    run(project, "tpl1").assert_outcomes(passed=1)
    second = run(project, "tpl2")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["*template harness/template/*: reused*"])
    versions = project.path / "auth-service" / "alembic" / "versions"
    revision = sorted(versions.glob("*.py"))[-1]
    revision.write_text(revision.read_text() + "\n# a change to a migration\n")
    third = run(project, "tpl3")
    third.assert_outcomes(passed=1)
    third.stdout.fnmatch_lines(["*template harness/template/*: built by this run*"])


def test_xdist_workers_get_their_own_databases_and_none_remain(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_workers="""
import os, pathlib, pytest

@pytest.mark.parametrize("n", range(8))
def test_record(neon_branch, n):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    out = pathlib.Path(__file__).parent / "seen"
    out.mkdir(exist_ok=True)
    (out / f"{worker}-{n}").write_text(f"{neon_branch.id} {neon_branch.database}")
"""
    )
    result = run(project, "xd1", "-n", "2")
    result.assert_outcomes(passed=8)
    seen: dict[str, set[str]] = {}
    for path in (project.path / "seen").iterdir():
        seen.setdefault(path.name.split("-")[0], set()).add(path.read_text())
    assert len(seen) == 2
    seen_by_worker = [next(iter(v)).split() for v in seen.values()]
    assert all(len(v) == 1 for v in seen.values())
    assert len({branch for branch, _ in seen_by_worker}) == 1  # one branch, a database each
    assert sorted(database for _, database in seen_by_worker) == ["cathouse_gw0", "cathouse_gw1"]
    assert branches_of_run(project.path, "xd1") == []


def test_killed_xdist_worker_leaves_no_branch(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_crash="""
import os, signal

def test_ok(neon_branch):
    pass

def test_crash(neon_branch):
    # whichever worker gets this test dies with it (xdist hands tests to the first free one)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)
"""
    )
    result = run(project, "crash1", "-n", "2", "--max-worker-restart", "0")
    assert result.ret != 0 and "crashed" in result.stdout.str()
    deadline = time.time() + 15
    while time.time() < deadline and branches_of_run(project.path, "crash1"):
        time.sleep(0.2)
    assert branches_of_run(project.path, "crash1") == []


def _start_sleeping_run(project: pytest.Pytester, run_id: str) -> subprocess.Popen[bytes]:
    project.makepyfile(
        test_sleep="""
import time

def test_sleeps(neon_branch):
    time.sleep(60)
"""
    )
    env = {**os.environ, "CATHOUSE_RUN_ID": run_id}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not branches_of_run(project.path, run_id):
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        time.sleep(0.2)
    assert branches_of_run(project.path, run_id) == [f"harness/{run_id}/main"]
    return process


def test_sigint_mid_session_leaves_no_branch(project: pytest.Pytester) -> None:
    process = _start_sleeping_run(project, "int1")
    process.send_signal(signal.SIGINT)
    process.wait(30)
    assert branches_of_run(project.path, "int1") == []


def test_sigkill_of_the_run_is_cleaned_by_the_watchdog(project: pytest.Pytester) -> None:
    process = _start_sleeping_run(project, "kill1")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    killed_at = time.time()
    while time.time() - killed_at < 10 and branches_of_run(project.path, "kill1"):
        time.sleep(0.2)
    assert branches_of_run(project.path, "kill1") == []


def test_works_by_name_with_plugin_autoload_disabled(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_autoload_off="""
from sqlalchemy import text

async def test_async_fixture(db_session, database_url):
    assert database_url.startswith("postgresql+asyncpg://")
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1
"""
    )
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = run(project, "noauto1")
    result.assert_outcomes(passed=1)
    assert branches_of_run(project.path, "noauto1") == []


def test_reset_marker_restores_the_branch_after_the_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marker="""
import asyncio

import asyncpg
import pytest

COUNT = "SELECT count(*) FROM auth.users WHERE email = 'marker@cathouse.test'"


def run(url, sql):
    async def go():
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()
    return asyncio.run(go())


@pytest.mark.cathouse_reset
def test_a_commits(migration_database_url):
    run(migration_database_url, "INSERT INTO auth.users (email) VALUES ('marker@cathouse.test')")
    assert run(migration_database_url, COUNT) == 1


def test_b_sees_the_template_again(migration_database_url):
    assert run(migration_database_url, COUNT) == 0
"""
    )
    result = run(project, "mark1", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_db_session_on_a_session_loop_reuses_one_connection(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_session_loop="""
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.asyncio(loop_scope="session")
PIDS = []

async def test_a(db_session):
    PIDS.append((await db_session.execute(text("SELECT pg_backend_pid()"))).scalar())
    await db_session.execute(text("INSERT INTO auth.users (email) VALUES ('loop@cathouse.test')"))
    await db_session.commit()

async def test_b(db_session):
    PIDS.append((await db_session.execute(text("SELECT pg_backend_pid()"))).scalar())
    count = "SELECT count(*) FROM auth.users WHERE email = 'loop@cathouse.test'"
    assert (await db_session.execute(text(count))).scalar() == 0

def test_c_one_connection():
    assert len(PIDS) == 2 and PIDS[0] == PIDS[1]
"""
    )
    result = run(project, "loop1", "-o", "asyncio_default_fixture_loop_scope=session")
    result.assert_outcomes(passed=3)


PER_TEST = COMMIT_A_TABLE + """
import os

import pytest

SEEN = set()


@pytest.mark.cathouse_branch_per_test
@pytest.mark.parametrize("n", range(3))
def test_marked(n, neon_branch):
    url = os.environ["MIGRATION_DATABASE_URL"]
    assert url != neon_branch.migration_database_url
    assert commit_a_table(url) is None  # nothing of the earlier tests' commits
    SEEN.add(url)


def test_fixture(branch_per_test, neon_branch, migration_database_url):
    assert branch_per_test.id != neon_branch.id and branch_per_test.parent_id == neon_branch.parent_id
    assert os.environ["MIGRATION_DATABASE_URL"] == branch_per_test.migration_database_url
    assert commit_a_table(branch_per_test.migration_database_url) is None
    assert migration_database_url == neon_branch.migration_database_url


def test_session_branch_untouched(neon_branch):
    assert len(SEEN) == 3
    assert os.environ["MIGRATION_DATABASE_URL"] == neon_branch.migration_database_url
    with psycopg.connect(neon_branch.migration_database_url) as connection:
        assert connection.execute("SELECT to_regclass('public.marks')").fetchone()[0] is None
"""


def test_branch_per_test_marker_and_fixture(project: pytest.Pytester) -> None:
    project.makepyfile(test_per_test=PER_TEST)
    result = run(project, "pertest1")
    result.assert_outcomes(passed=5)
    assert branches_of_run(project.path, "pertest1") == []


BROKEN_REVISION = (
    "from alembic import op\n\n"
    "revision = 'ffff00000002'\ndown_revision = '8b4e6d0a5c21'\n"
    "branch_labels = None\ndepends_on = None\n\n\n"
    "def upgrade():\n    op.execute('SELECT no_such_function()')\n\n\n"
    "def downgrade():\n    pass\n"
)


def test_a_broken_migration_fails_the_run_with_exit_1(project: pytest.Pytester) -> None:
    """A migration that fails is a failure of the run (1), in one line naming the
    revision, not pytest's internal error (3)."""
    versions = project.path / "auth-service" / "alembic" / "versions"
    (versions / "ffff00000002_broken.py").write_text(BROKEN_REVISION, encoding="utf-8")
    project.makepyfile(test_one=BRANCH_TEST)
    result = run(project, "brokenmig1")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert "ffff00000002" in output and "INTERNALERROR" not in output
    assert "Traceback" not in output


def test_an_unreachable_backend_fails_the_run_with_exit_1(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the API's (local) address: exit 1 at once, and the hint names
    the backend, not parent_branch, which the API never got to judge."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CATHOUSE_BACKEND", "neon")
    monkeypatch.setenv("NEON_API_KEY", "test-key-unreachable")
    monkeypatch.setenv("NEON_PROJECT_ID", "p-unreachable")
    monkeypatch.setenv("NEON_API_HOST", f"http://127.0.0.1:{port}/api/v2")
    project.makepyfile(test_one=BRANCH_TEST)
    result = run(project, "unreach1")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert f"127.0.0.1:{port}" in output and "parent_branch" not in output
    assert "gave up after" not in output and "INTERNALERROR" not in output
    assert "test-key-unreachable" not in output
