"""The harness migrates projects it did not write, and nothing else.

Every shape in `_projects.SHAPES` (each `alembic init` template the installed Alembic
lists, and env.py files written as real projects write them) is migrated three ways:
in process with `migrate_all`, through the plugin (`-n 0` and `-n 2`), and through
`cathouse-branch up`. The database the project's own configuration names stays as it was.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import SafetyError
from cathouse_harness.migrate.all_services import migrate_all

from tests.adoption._projects import SHAPES, Project, own_variable
from tests.adoption.conftest import run_plugin, tables_of

UNTOUCHED = {"public.precious"}


def build(shape: str, root: Path, foreign_url: str) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    return SHAPES[shape](root, foreign_url)


def assert_untouched(project: Project) -> None:
    if project.foreign_url is not None:
        assert tables_of(project.foreign_url) == UNTOUCHED


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_migrate_all_lands_in_the_given_database(
    shape: str, tmp_path: Path, fresh_database_url: str, foreign_database_url: str
) -> None:
    project = build(shape, tmp_path / "project", foreign_database_url)
    results = migrate_all(load_settings(project.root, environ={}), fresh_database_url)
    assert all(r.after for r in results), results
    assert set(project.expected) <= tables_of(fresh_database_url)
    assert_untouched(project)
    # a second run finds every service at head and changes nothing
    again = migrate_all(load_settings(project.root, environ={}), fresh_database_url)
    assert not any(r.changed for r in again)


def test_env_py_with_a_url_of_its_own_is_refused_before_any_statement(
    tmp_path: Path, fresh_database_url: str, foreign_database_url: str
) -> None:
    project = own_variable(tmp_path / "project", foreign_database_url)
    with pytest.raises(SafetyError) as caught:
        migrate_all(load_settings(project.root, environ={}), fresh_database_url)
    text = str(caught.value)
    password = urlsplit(foreign_database_url).password or ""
    assert "\n" not in text and password not in text
    assert str(project.root / "billing-service" / "alembic" / "env.py") in text
    assert f"{urlsplit(foreign_database_url).port}/{urlsplit(foreign_database_url).path[1:]}" in text
    assert "refused before any statement" in text and "docs/your-project.md" in text
    assert caught.value.exit_code == 2
    assert_untouched(project)
    assert not any(t.startswith("public.things") for t in tables_of(fresh_database_url))


# --- through the plugin and the CLI, as a user runs them ---------------------------

PLUGIN_TEST = '''
import psycopg

EXPECTED = {expected!r}


def tables(url):
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
    return {{row[0] for row in rows}}


def test_migrated(migration_database_url):
    assert set(EXPECTED) <= tables(migration_database_url)


def test_migrated_too(migration_database_url):
    assert set(EXPECTED) <= tables(migration_database_url)
'''


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_plugin_migrates_the_project(
    shape: str, workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
    foreign_database_url: str,
) -> None:
    project = build(shape, pytester.path, foreign_database_url)
    pytester.makepyfile(test_adopted=PLUGIN_TEST.format(expected=project.expected))
    result = run_plugin(pytester, monkeypatch, f"adopt-{workers}-{shape}", workers)
    result.assert_outcomes(passed=2)
    assert_untouched(project)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_cli_up_migrates_the_project(shape: str, tmp_path: Path, foreign_database_url: str) -> None:
    project = build(shape, tmp_path / "project", foreign_database_url)
    out, err = io.StringIO(), io.StringIO()
    args = ["--project-dir", str(project.root)]
    code = cli_main(["up", "--json", "--show-secrets", "--name", f"adopt-{shape}", *args], out=out, err=err)
    assert code == 0, err.getvalue()
    try:
        url = json.loads(out.getvalue())["migration_database_url"]
        assert set(project.expected) <= tables_of(url)
        assert_untouched(project)
    finally:
        assert cli_main(["down", *args], out=io.StringIO(), err=err) == 0, err.getvalue()


def test_refused_env_py_through_plugin_and_cli_is_one_line_and_exit_2(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, foreign_database_url: str
) -> None:
    project = own_variable(pytester.path, foreign_database_url)
    pytester.makepyfile(test_adopted=PLUGIN_TEST.format(expected=[]))
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CATHOUSE_RUN_ID", "adopt-refused")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    result = pytester.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    password = urlsplit(foreign_database_url).password or ""
    output = "\n".join(result.outlines + result.errlines)
    assert password not in output
    refused = [line for line in output.splitlines() if "refused before any statement" in line]
    assert refused and "env.py" in refused[0] and "billing-service" in refused[0]

    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["up", "--project-dir", str(project.root)], out=out, err=err)
    assert code == 2
    lines = [line for line in err.getvalue().splitlines() if "refused" in line]
    assert len(lines) == 1 and password not in err.getvalue() + out.getvalue()
    assert_untouched(project)
