"""Never silently green: while a session holds a branch, a test that reaches for another
PostgreSQL (the developer's own, named by the project's `.env` and shell) fails with one
line and that server sees no connection.

"Another PostgreSQL" is a listening socket on loopback that nobody answers: anything that
connected would sit in its accept queue, so `accepted` tells whether anything did.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests._listener import accepted, listening
from tests.plugin._support import run

SETTINGS_APP = """
import os
from pathlib import Path

import psycopg
from dotenv import dotenv_values

FIELDS = ("HOSTNAME", "PORT", "USERNAME", "PASSWORD", "DB")


def database_settings():
    # as pydantic-settings reads them: the environment over the project's .env
    found = dotenv_values(Path(__file__).parent / ".env")
    return {f: os.environ.get(f"DATABASE__{f}") or found[f"DATABASE__{f}"] for f in FIELDS}


def connect():
    s = database_settings()
    return psycopg.connect(host=s["HOSTNAME"], port=s["PORT"], user=s["USERNAME"],
                           password=s["PASSWORD"], dbname=s["DB"], connect_timeout=3)
"""

APP_TESTS = """
import pytest
from app import connect


def test_reads_its_own_settings():
    with connect() as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS seen (x int)")
        assert connection.execute("SELECT count(*) FROM seen").fetchone() == (0,)


def test_that_swallows_connection_errors():
    try:
        connect().close()
    except Exception:
        pass


@pytest.mark.xfail(reason="the developer's database is sometimes down")
def test_marked_xfail():
    connect().close()
"""

MAPPING = """
[tool.cathouse_harness.env]
DATABASE__HOSTNAME = "{host}"
DATABASE__PORT = "{port}"
DATABASE__USERNAME = "{user}"
DATABASE__PASSWORD = "{password}"
DATABASE__DB = "{database}"
"""

DEV_PASSWORD = "DevOnly-Secret-31"


@pytest.fixture
def other_postgresql() -> Iterator[socket.socket]:
    with listening() as server:
        yield server


def _app_project(project: pytest.Pytester, server: socket.socket, monkeypatch: pytest.MonkeyPatch,
                 *, mapping: bool, uses_branch: bool = True) -> None:
    """A project configured for the harness whose settings (.env and shell alike) name the
    developer's own server; its tests use the branch (`usefixtures`, as README says), or
    (`uses_branch=False`) ask for nothing of the harness at all."""
    port = server.getsockname()[1]
    dev = {"DATABASE__HOSTNAME": "127.0.0.1", "DATABASE__PORT": str(port),
           "DATABASE__USERNAME": "dev", "DATABASE__PASSWORD": DEV_PASSWORD, "DATABASE__DB": "app_dev"}
    (project.path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dev.items()))
    for name, value in dev.items():
        monkeypatch.setenv(name, value)
    pyproject = project.path / "pyproject.toml"
    text = pyproject.read_text()
    if uses_branch:
        text = text.replace(
            "[tool.pytest.ini_options]\n", '[tool.pytest.ini_options]\nusefixtures = ["neon_branch"]\n')
    pyproject.write_text(text + (MAPPING if mapping else ""))
    project.makepyfile(app=SETTINGS_APP, test_app=APP_TESTS)


def test_without_the_mapping_the_run_is_red_with_one_line_and_reaches_nothing(
    project: pytest.Pytester, other_postgresql: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    _app_project(project, other_postgresql, monkeypatch, mapping=False)
    result = run(project, "guard1")
    result.assert_outcomes(failed=3)
    assert accepted(other_postgresql) == 0
    port = other_postgresql.getsockname()[1]
    output = result.stdout.str()
    for test in ("test_reads_its_own_settings", "test_that_swallows_connection_errors",
                 "test_marked_xfail"):
        lines = [line for line in result.stdout.lines if line.startswith(f"test_app.py::{test}: ")]
        assert lines == [
            f"test_app.py::{test}: connection to 127.0.0.1:{port}/app_dev (environment "
            "DATABASE__HOSTNAME/DATABASE__PORT) refused before it opened: it is not this "
            "session's branch (map the project's own variables onto the branch in "
            "[tool.cathouse_harness.env], or name this target in allow_connections if the "
            "test means it; README 'Only the branch is reachable')"
        ]
    assert DEV_PASSWORD not in output and "Traceback" not in output
    assert "psycopg" not in "\n".join(line for line in result.stdout.lines if line.startswith("E "))


def test_with_the_mapping_the_run_uses_the_branch_and_reaches_nothing_else(
    project: pytest.Pytester, other_postgresql: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    _app_project(project, other_postgresql, monkeypatch, mapping=True)
    result = run(project, "guard2")
    result.assert_outcomes(passed=2, xpassed=1)
    assert accepted(other_postgresql) == 0
    assert DEV_PASSWORD not in result.stdout.str()


BRANCH_USES = """
import asyncio
import os

import psycopg
import pytest
from cathouse_harness.db.urls import with_database
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def test_an_allowed_target_is_reached(neon_branch):
    with pytest.raises(psycopg.OperationalError):  # the listener never answers
        psycopg.connect(os.environ["REPORTING_URL"], connect_timeout=1)


def test_a_database_made_on_the_branch_is_reachable(neon_branch):
    with psycopg.connect(neon_branch.migration_database_url, autocommit=True) as c:
        c.execute("CREATE DATABASE made_by_test")
    try:
        with psycopg.connect(with_database(neon_branch.direct_url, "made_by_test")) as c:
            c.execute("CREATE TABLE marker (x int)")
            c.execute("INSERT INTO marker VALUES (7)")

        async def pooled():  # SQLAlchemy and asyncpg, through the pooled endpoint
            engine = create_async_engine(with_database(neon_branch.database_url, "made_by_test"))
            try:
                async with engine.connect() as connection:
                    return (await connection.execute(text("SELECT x FROM marker"))).scalar()
            finally:
                await engine.dispose()

        assert asyncio.run(pooled()) == 7
    finally:
        with psycopg.connect(neon_branch.migration_database_url, autocommit=True) as c:
            c.execute("DROP DATABASE made_by_test WITH (FORCE)")


def test_a_branch_of_its_own_is_reachable(branch_per_test):
    with psycopg.connect(branch_per_test.direct_url) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
"""


def test_the_branch_its_databases_and_allowed_targets_stay_reachable(
    project: pytest.Pytester, other_postgresql: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = other_postgresql.getsockname()[1]
    monkeypatch.setenv("REPORTING_URL", f"postgresql://dev:{DEV_PASSWORD}@127.0.0.1:{port}/reports")
    pyproject = project.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        "[tool.cathouse_harness]\n",
        f'[tool.cathouse_harness]\nallow_connections = ["127.0.0.1:{port}/reports"]\n'))
    project.makepyfile(test_uses=BRANCH_USES)
    result = run(project, "guard3")
    result.assert_outcomes(passed=3)
    assert accepted(other_postgresql) == 1  # the allowed one, and only it


def test_a_configured_run_that_asks_for_no_branch_is_red_too(
    project: pytest.Pytester, other_postgresql: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test asks for a harness fixture, so no branch is made: the app's own database is
    still out of reach from the moment the conftests load, and the run says it used none."""
    _app_project(project, other_postgresql, monkeypatch, mapping=False, uses_branch=False)
    result = run(project, "guard-nobranch")
    result.assert_outcomes(failed=3)
    assert accepted(other_postgresql) == 0
    port = other_postgresql.getsockname()[1]
    refused = [line for line in result.stdout.lines if line.startswith("test_app.py::")
               and f"connection to 127.0.0.1:{port}/app_dev" in line and "refused before it opened" in line]
    assert len(refused) == 3, result.stdout.lines
    assert DEV_PASSWORD not in result.stdout.str() and "Traceback" not in result.stdout.str()


CONNECTS_AT_IMPORT = """
from app import connect

try:  # as a conftest that seeds the developer's database at import would
    connect().close()
except Exception:
    pass
"""


def test_an_xdist_controller_is_guarded_before_any_branch(
    project: pytest.Pytester, other_postgresql: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller imports the conftests too, before any worker has asked for a branch;
    its broker's own forks and copies still go through (the tests get their databases)."""
    _app_project(project, other_postgresql, monkeypatch, mapping=False)
    project.makeconftest(CONNECTS_AT_IMPORT)
    result = run(project, "guard-xdist", "-n", "2")
    assert accepted(other_postgresql) == 0
    # a worker's refusal at import is its first test's error; the test it gave a branch
    # to (the broker forked and copied under the controller's guard) fails on its own
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("failed", 0) + outcomes.get("errors", 0) == 3
    assert "refused before it opened" in result.stdout.str()
