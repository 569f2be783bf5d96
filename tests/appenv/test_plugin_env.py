"""The app under test gets the branch: names mapped in [tool.cathouse_harness.env] hold
the branch's values before the project's conftest files are imported (issue #23)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cathouse_harness.cleanup.runs import owner_token
from pytest_cathouse_harness.report import NO_BRANCH_LINE

from tests.appenv.conftest import add_toml, add_top_key
from tests.plugin._support import branches_of_run, run

POSTGRES_MAPPING = """
[tool.cathouse_harness.env]
POSTGRES_SERVER = "{host}"
POSTGRES_PORT = "{port}"
POSTGRES_USER = "{user}"
POSTGRES_PASSWORD = "{password}"
POSTGRES_DB = "{database}"
POSTGRES_SSLMODE = "{sslmode}"
POSTGRES_SSLROOTCERT = "{sslrootcert}"
APP_DATABASE_URL = "{url:libpq}"
"""

# An app's settings read at import (full-stack-fastapi-template's shape): a sync engine
# over psycopg built from POSTGRES_*, before any fixture runs.
POSTGRES_CONFTEST = """
import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

NAMES = ("POSTGRES_SERVER", "POSTGRES_PORT", "POSTGRES_DB", "DATABASE_URL",
         "MIGRATION_DATABASE_URL", "APP_DATABASE_URL")
SEEN = {name: os.environ.get(name) for name in NAMES}
query = {"sslmode": os.environ["POSTGRES_SSLMODE"]}
if os.environ["POSTGRES_SSLROOTCERT"]:
    query["sslrootcert"] = os.environ["POSTGRES_SSLROOTCERT"]
ENGINE = create_engine(URL.create(
    "postgresql+psycopg", username=os.environ["POSTGRES_USER"],
    password=os.environ["POSTGRES_PASSWORD"], host=os.environ["POSTGRES_SERVER"],
    port=int(os.environ["POSTGRES_PORT"]), database=os.environ["POSTGRES_DB"], query=query,
), poolclass=__import__("sqlalchemy.pool").pool.NullPool)


@pytest.fixture
def app_engine():
    return ENGINE


@pytest.fixture
def seen():
    return SEEN
"""

POSTGRES_TESTS = """
import psycopg
from sqlalchemy import text
from cathouse_harness.db.urls import endpoint_of

QUERY = "SELECT current_database(), to_regclass('auth.users') IS NOT NULL"


def test_the_apps_engine_reaches_a_migrated_database(app_engine):
    with app_engine.connect() as connection:
        assert connection.execute(text(QUERY)).one()[1]


def test_it_is_the_fixtures_branch(app_engine, neon_branch, seen):
    with app_engine.connect() as connection:
        through_app = tuple(connection.execute(text(QUERY)).one())
    with psycopg.connect(neon_branch.pooled_url) as connection:
        assert connection.execute(QUERY).fetchone() == through_app
    pooled = endpoint_of(neon_branch.pooled_url)
    assert (seen["POSTGRES_SERVER"], int(seen["POSTGRES_PORT"]), seen["POSTGRES_DB"]) == (
        pooled.host, pooled.port, neon_branch.database)
    assert seen["DATABASE_URL"] == neon_branch.database_url
    assert seen["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert seen["MIGRATION_DATABASE_URL"] == neon_branch.migration_database_url
    assert endpoint_of(seen["MIGRATION_DATABASE_URL"]) == endpoint_of(neon_branch.direct_url)
    assert seen["APP_DATABASE_URL"].startswith("postgresql://")
    assert endpoint_of(seen["APP_DATABASE_URL"]) == pooled
"""


def _postgres_project(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    add_top_key(project, 'url_driver = "psycopg"')
    add_toml(project, POSTGRES_MAPPING)
    project.makeconftest(POSTGRES_CONFTEST)
    project.makepyfile(test_app=POSTGRES_TESTS)
    # the developer's shell names another server: it must never be what the app sees
    monkeypatch.setenv("POSTGRES_SERVER", "developer-database.invalid")
    monkeypatch.setenv("POSTGRES_DB", "developer")


@pytest.mark.parametrize("loading", ["-p", "autoload"])
def test_settings_read_at_import_see_the_branch(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, loading: str
) -> None:
    _postgres_project(project, monkeypatch)
    run_id = f"appenv-{loading.strip('-')}"
    if loading == "-p":
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        result = run(project, run_id)
    else:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        monkeypatch.setenv("CATHOUSE_RUN_ID", run_id)
        result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*branch harness/{run_id}/main (br-*"])
    assert NO_BRANCH_LINE not in result.stdout.str()
    assert branches_of_run(project.path, run_id) == []


NESTED_MAPPING = """
[tool.cathouse_harness.env]
DATABASE__HOSTNAME = "{host}"
DATABASE__PORT = "{port}"
DATABASE__USERNAME = "{user}"
DATABASE__PASSWORD = "{password}"
DATABASE__DB = "{database}"
DATABASE__SSLMODE = "{sslmode}"
"""

# pydantic-settings' nested form (env_nested_delimiter="__"), read and used at import:
# the app checks its database while its settings module loads.
NESTED_CONFTEST = """
import os

import psycopg
import pytest

with psycopg.connect(
    host=os.environ["DATABASE__HOSTNAME"], port=int(os.environ["DATABASE__PORT"]),
    user=os.environ["DATABASE__USERNAME"], password=os.environ["DATABASE__PASSWORD"],
    dbname=os.environ["DATABASE__DB"], sslmode=os.environ["DATABASE__SSLMODE"],
) as connection:
    AT_IMPORT = connection.execute(
        "SELECT current_database(), to_regclass('auth.users') IS NOT NULL"
    ).fetchone()
HOST_PORT = (os.environ["DATABASE__HOSTNAME"], int(os.environ["DATABASE__PORT"]))


@pytest.fixture
def at_import():
    return AT_IMPORT, HOST_PORT
"""

NESTED_TESTS = """
import psycopg
from cathouse_harness.db.urls import endpoint_of


def test_the_import_time_connection_reached_a_migrated_database(at_import):
    (_, users), _ = at_import
    assert users


def test_it_was_the_fixtures_branch(at_import, neon_branch):
    with psycopg.connect(neon_branch.pooled_url) as connection:
        assert connection.execute("SELECT current_database()").fetchone()[0] == at_import[0][0]
    pooled = endpoint_of(neon_branch.pooled_url)
    assert at_import[1] == (pooled.host, pooled.port)
"""


def test_nested_settings_connect_at_import_to_the_branch(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    add_toml(project, NESTED_MAPPING)
    project.makeconftest(NESTED_CONFTEST)
    project.makepyfile(test_nested=NESTED_TESTS)
    # the developer's local PostgreSQL (a database without the services' tables)
    from cathouse_harness.config.app_env import url_parts

    local = url_parts(fresh_database_url)
    for key, name in (("host", "HOSTNAME"), ("port", "PORT"), ("user", "USERNAME"),
                      ("password", "PASSWORD"), ("database", "DB")):
        monkeypatch.setenv(f"DATABASE__{name}", local[key])
    result = run(project, "appenv-nested")
    result.assert_outcomes(passed=2)
    assert branches_of_run(project.path, "appenv-nested") == []


def test_no_mapping_and_no_fixture_makes_no_api_call_but_says_so(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "untouched-home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    project.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    result = run(project, "appenv-green")
    result.assert_outcomes(passed=1)
    assert not home.exists(), "the plugin started something for a suite that used none of it"
    assert result.stdout.lines.count(NO_BRANCH_LINE) == 1
    assert "cathouse-harness summary" not in result.stdout.str()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('POSTGRES_SERVER = "{hots}"', "env.POSTGRES_SERVER (from *pyproject.toml "
         "[[]tool.cathouse_harness[]]): unknown placeholder {hots} (placeholders: *"),
        ('"2FAST" = "{host}"', "env (from *): '2FAST' is not an environment variable name *"),
        ('APP_URL = "{url:pg8000}"', "env.APP_URL (from *): {url:pg8000}: 'pg8000' is not a "
         "driver form (use one of :asyncpg, :psycopg, :psycopg2, :libpq)"),
    ],
)
def test_a_bad_mapping_is_one_line_and_a_usage_error(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str,
    expected: str,
) -> None:
    home = tmp_path / "untouched-home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    add_toml(project, f"[tool.cathouse_harness.env]\n{table}\n")
    project.makeconftest("raise AssertionError('the conftest must not be imported')\n")
    project.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(project, "appenv-bad")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: cathouse-harness: {expected}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not home.exists()


@pytest.mark.parametrize("kind", ["engine at import", "connection at import"])
def test_under_xdist_each_process_has_its_own_database_before_its_conftests(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The controller imports the conftests too: one that connects at import reaches a
    database of the run's branch there as well, not a placeholder."""
    if kind == "engine at import":
        _postgres_project(project, monkeypatch)
        tests = POSTGRES_TESTS
    else:
        add_toml(project, NESTED_MAPPING)
        project.makeconftest(NESTED_CONFTEST)
        tests = NESTED_TESTS
    for n in range(3):  # files enough that both workers get some
        project.makepyfile(**{f"test_app_{n}": tests})
    run_id = f"appenv-xdist{len(kind)}"
    result = run(project, run_id, "-n", "2", "--dist", "loadfile")
    result.assert_outcomes(passed=2 * len(list(project.path.glob("test_*.py"))))
    result.stdout.fnmatch_lines([f"*branch harness/{run_id}/workers (br-*"])
    assert NO_BRANCH_LINE not in result.stdout.str()
    assert branches_of_run(project.path, run_id) == []


def test_without_a_mapping_a_conftest_reads_no_shell_database_at_import(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    """DATABASE_URL / MIGRATION_DATABASE_URL are hidden before the conftests load, not at
    pytest_configure, which comes after them."""
    project.makeconftest(
        "import os\nSEEN = (os.environ.get('DATABASE_URL'), os.environ.get('MIGRATION_DATABASE_URL'))\n"
        "import pytest\n\n@pytest.fixture\ndef seen():\n    return SEEN\n"
    )
    project.makepyfile(test_seen="""
def test_the_conftest_saw_the_placeholder(seen):
    assert all("branch-not-created-yet.invalid" in url for url in seen), seen
""")
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    result = run(project, "appenv-hidden")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("conftest", ["reads", "connects"])
def test_a_setup_that_fails_before_the_conftests_is_one_line(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, conftest: str
) -> None:
    """The first test reports it, as a fixture's failed setup does; a conftest that fails
    on the placeholder meanwhile is not what the run ends with."""
    add_toml(project, '[tool.cathouse_harness.env]\nPOSTGRES_SERVER = "{host}"\n')
    body = "import os\nHOST = os.environ['POSTGRES_SERVER']\n"
    if conftest == "connects":
        body += "import socket\nsocket.getaddrinfo(HOST, 5432)\n"
    project.makeconftest(body)
    project.makepyfile(test_plain="def test_plain():\n    pass\n")
    monkeypatch.setenv("CATHOUSE_PARENT_BRANCH", "no-such-parent")
    result = run(project, f"appenv-fail-{conftest}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    lines = [line for line in text.splitlines() if "'no-such-parent' not found" in line]
    assert len(lines) == 1 and "parent_branch (from environment" in lines[0], text
    assert "Traceback" not in text and "getaddrinfo" not in text
    assert branches_of_run(project.path, f"appenv-fail-{conftest}") == []


def test_a_run_started_inside_an_xdist_workers_test_is_no_worker(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that runs pytest in a subprocess under `-n 2` hands it the worker's
    variables; that run has no controller and must make its own branch, not wait for one."""
    _postgres_project(project, monkeypatch)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "a-worker-s-run")
    # and its controller's owner token (that controller's broker serves branches, not to
    # it), and the worker's own pid, as a worker's plugin leaves them
    monkeypatch.setenv("CATHOUSE_XDIST_OWNER", f"a-worker-s-run {owner_token()}")
    monkeypatch.setenv("CATHOUSE_XDIST_WORKER_PID", str(os.getpid()))
    monkeypatch.setenv("CATHOUSE_RUN_ID", "appenv-nested")
    result = project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*branch harness/appenv-nested/main (br-*"])
