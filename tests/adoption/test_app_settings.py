"""Suites we may not edit run on a branch with configuration only (issue #23).

Each project (tests/adoption/_app_shapes.py) is the shape of a public backend we ran
through the plugin: its app reads its own variables, its `.env` names another database,
and the harness is told everything through the file CATHOUSE_CONFIG names, outside the
project. Its suite must pass on the branch, and the database its `.env` names must see
nothing: no table, no database created there.

The mapping ([tool.cathouse_harness.env]) and the system PostgreSQL are features landing
in parallel; a test that needs one is skipped, saying which, while the harness installed
here does not offer it (detected by asking the harness, not by a version).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.support import env

from tests.adoption._app_shapes import AppProject, nested_settings_own_databases, postgres_vars_at_import
from tests.adoption._projects import THINGS_DOWN, THINGS_UP, _init, _revision
from tests.adoption.conftest import tables_of

UNTOUCHED = {"public.precious"}


def _maps_app_env() -> bool:
    """Whether the installed harness sets the app's own names before its conftests load:
    its settings accept [tool.cathouse_harness.env] and its plugin acts in
    pytest_load_initial_conftests (the settings alone, as `init` reads them, are not
    enough: the names must reach the app's import-time settings)."""
    import pytest_cathouse_harness.plugin as plugin

    if not hasattr(plugin, "pytest_load_initial_conftests"):
        return False
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "pyproject.toml").write_text('[tool.cathouse_harness.env]\nAPP_DB_HOST = "{host}"\n')
        try:
            load_settings(root, environ={})
        except ConfigError:
            return False
    return True


def _system_postgres_with(*extensions: str) -> bool:
    """Whether the harness can run its embedded default on a system PostgreSQL (the
    CATHOUSE_POSTGRES_BIN setting) and Debian's package, with these extensions, is here."""
    if "CATHOUSE_POSTGRES_BIN" not in env.VARIABLES:
        return False
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        share = Path("/usr/share/postgresql") / bin_dir.parent.name / "extension"
        if (bin_dir / "postgres").is_file() and all(
            (share / f"{name}.control").is_file() for name in extensions
        ):
            return True
    return False


needs_mapping = pytest.mark.skipif(
    not _maps_app_env(),
    reason="needs the app's own names set before its conftests load "
    "([tool.cathouse_harness.env], #23 part 1)",
)
needs_system_postgres = pytest.mark.skipif(
    not (_maps_app_env() and _system_postgres_with("uuid-ossp", "pgcrypto")),
    reason="needs the mapping and a system PostgreSQL with uuid-ossp and pgcrypto "
    "(CATHOUSE_POSTGRES_BIN, #23 part 7)",
)


def _databases_on(url: str) -> set[str]:
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain) as connection:
        rows = connection.execute("SELECT datname FROM pg_database").fetchall()
    return {row[0] for row in rows}


def run_suite(
    project: AppProject, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str,
    *extra: str,
) -> pytest.RunResult:
    """The project's suite as its developer runs it, from its own directory, with the
    plugin named on the command line and our table in CATHOUSE_CONFIG only."""
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("CATHOUSE_CONFIG", str(project.config))
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CATHOUSE_RUN_ID", f"app-{workers}-{project.root.name}")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS", "DATABASE_URL", "MIGRATION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    if project.pythonpath:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(map(str, project.pythonpath)))
    return pytester.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider",
                                         "-n", workers, *extra)


def _project_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.py"))
            if "__pycache__" not in p.parts} | {"pyproject.toml": (root / "pyproject.toml").read_text()}


@needs_mapping
@pytest.mark.parametrize("workers", ["0", "2"])
def test_sync_app_reading_postgres_vars_at_import(
    workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str
) -> None:
    project = postgres_vars_at_import(pytester.path, foreign_database_url)
    before = _project_files(project.root)
    databases = _databases_on(foreign_database_url)

    result = run_suite(project, pytester, monkeypatch, workers)

    result.assert_outcomes(passed=project.tests)
    assert tables_of(foreign_database_url) == UNTOUCHED
    assert _databases_on(foreign_database_url) == databases
    assert _project_files(project.root) == before  # configuration only


@needs_mapping
@pytest.mark.parametrize("workers", ["0", "2"])
def test_models_in_an_installed_registry_while_the_template_is_built(
    workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str
) -> None:
    """The template is built before the conftests load, and its env.py imports the models:
    the conftest importing them again must not find them registered already (the public
    full-stack template's SQLModel tables were "already defined" on a cold home)."""
    project = postgres_vars_at_import(pytester.path, foreign_database_url, registry=uuid.uuid4().hex)

    result = run_suite(project, pytester, monkeypatch, workers)

    assert "built by this run" in result.stdout.str()
    result.assert_outcomes(passed=project.tests)
    assert tables_of(foreign_database_url) == UNTOUCHED


@needs_mapping
@pytest.mark.parametrize("workers", ["0", "2"])
def test_async_app_with_nested_settings_making_its_own_databases(
    workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str
) -> None:
    project = nested_settings_own_databases(pytester.path, foreign_database_url)
    databases = _databases_on(foreign_database_url)

    result = run_suite(project, pytester, monkeypatch, workers)

    result.assert_outcomes(passed=project.tests)
    assert tables_of(foreign_database_url) == UNTOUCHED
    # its conftest's DROP/CREATE DATABASE test_db_gw<n> ran on the branch, not there
    assert _databases_on(foreign_database_url) == databases


@needs_system_postgres
def test_migration_creating_uuid_ossp_and_pgcrypto_on_a_system_postgres(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = postgres_vars_at_import(pytester.path, foreign_database_url, extensions=True)
    # a home of its own: the suite's home keeps its cluster on the wheel's PostgreSQL
    home = tmp_path_factory.mktemp("system-pg-home")
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_POSTGRES_BIN", "system")
    try:
        result = run_suite(project, pytester, monkeypatch, "0")
    finally:
        from cathouse_harness.local.server import stop_local_server

        stop_local_server(home)
    result.assert_outcomes(passed=project.tests)
    assert tables_of(foreign_database_url) == UNTOUCHED


# --- CATHOUSE_CONFIG alone, with the fixtures (no mapping needed) ---------------------

FIXTURE_TEST = '''
import psycopg


def test_migrated(migration_database_url):
    with psycopg.connect(migration_database_url) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert "things" in {row[0] for row in rows}
'''


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_project_configured_only_from_outside_gets_its_branch(
    workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `alembic init -t generic` and one revision: env.py takes sqlalchemy.url, which the
    # harness hands it; the project's pyproject.toml never hears of the harness
    root = pytester.path / "project"
    _init(root, "generic")
    _revision(root / "alembic" / "versions", "a1b2c3d4e5f6", THINGS_UP, THINGS_DOWN)
    (root / "pyproject.toml").write_text('[project]\nname = "theirs"\nversion = "0"\n')
    (root / "test_fixture.py").write_text(FIXTURE_TEST)
    config = pytester.path / "elsewhere" / "cathouse.toml"
    config.parent.mkdir()
    config.write_text('[tool.cathouse_harness]\n\n[[tool.cathouse_harness.services]]\nname = "app"\n'
                      'schema = "public"\nalembic_ini = "alembic.ini"\n')
    before = _project_files(root)

    result = run_suite(AppProject(root, config, tests=1), pytester, monkeypatch, workers)

    result.assert_outcomes(passed=1)
    assert _project_files(root) == before


def test_a_bad_config_file_stops_the_run_with_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str
) -> None:
    project = postgres_vars_at_import(pytester.path, foreign_database_url)
    project.config.write_text("[tool.cathouse_harness]\nparent = 'main'\n")
    result = run_suite(project, pytester, monkeypatch, "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.errlines + result.outlines if "unknown key 'parent'" in line]
    assert len(lines) == 1 and str(project.config) in lines[0]
    password = urlsplit(foreign_database_url).password or ""
    assert password not in "\n".join(result.outlines + result.errlines)

