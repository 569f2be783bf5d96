"""A Flask-SQLAlchemy + Flask-Migrate app (the shape of spiral-project/ihatemoney, run on
a branch for issue #23): its migrations/env.py is Flask-Migrate's and reads the URL and the
metadata off `flask.current_app`, so `alembic` run without the app stops at import
("Working outside of application context"). The app migrates itself instead (create_app()
calls flask_migrate.upgrade(), its fixture db.create_all()), and its tests read the URL
from one environment variable. init proposes the env mapping and no service for it;
proposed as a service, every run would stop before its first test."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.cli.project_init import check_proposal, propose
from cathouse_harness.config.settings import load_settings

from tests.adoption import _plugin_host as host

# written the way Flask-Migrate's `flask db init` template reads its app
FLASK_ENV_PY = '''\
from alembic import context
from flask import current_app
from sqlalchemy import engine_from_config, pool

config = context.config
config.set_main_option("sqlalchemy.url", current_app.config.get("SQLALCHEMY_DATABASE_URI"))
target_metadata = current_app.extensions["migrate"].db.metadata


def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
'''

TESTCASE = '''\
import os


class BaseTestCase:
    SQLALCHEMY_DATABASE_URI = os.environ.get("BUDGET_TEST_DATABASE_URI", "sqlite://")
'''


def flask_app(root: Path) -> Path:
    host.write(root / "pyproject.toml", '[project]\nname = "budget"\nversion = "0"\n'
               'dependencies = ["Flask-Migrate", "Flask-SQLAlchemy"]\n\n'
               '[project.optional-dependencies]\ndatabase = ["psycopg2-binary"]\n')
    migrations = root / "budget" / "migrations"
    host.write(migrations / "alembic.ini", "[alembic]\nscript_location = .\n")
    host.write(migrations / "env.py", FLASK_ENV_PY)
    host.revision(migrations / "versions", "b1b1b1b1b1b1",
                  'op.create_table("project", sa.Column("id", sa.String(64), primary_key=True))',
                  'op.drop_table("project")')
    host.write(root / "budget" / "tests" / "testcase.py", TESTCASE)
    return root


def test_a_flask_migrate_env_py_is_no_service_and_the_mapping_is_proposed(tmp_path: Path) -> None:
    root = flask_app(tmp_path / "budget")
    proposal = propose(root)
    assert proposal.services == ()
    assert any(note.startswith("budget/migrations/alembic.ini: not a service: its env.py reads "
                               "flask.current_app") for note in proposal.notes)
    assert [(line.name, line.template) for line in proposal.env.lines] == [
        ("BUDGET_TEST_DATABASE_URI", "{url:psycopg2}")
    ]
    check_proposal(proposal)
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["init", "--project-dir", str(root), "--yes"], out=out, err=err) == 0, err.getvalue()
    table = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["cathouse_harness"]
    assert "services" not in table
    assert table["env"] == {"BUDGET_TEST_DATABASE_URI": "{url:psycopg2}"}
    settings = load_settings(root, environ={})
    assert settings.services == ()


def test_beside_a_plain_service_only_the_plain_one_is_proposed(tmp_path: Path) -> None:
    """A monorepo with one Flask-Migrate app and one ordinary Alembic service: the ordinary
    one is still a service, with its pool; the Flask one is a note."""
    root = flask_app(tmp_path / "mono")
    host.build(root / "worker")
    proposal = propose(root)
    assert [s.alembic_ini for s in proposal.services] == ["worker/alembic.ini"]
    assert any(note.startswith("budget/migrations/alembic.ini: not a service")
               for note in proposal.notes)
    assert any(note.startswith("pools ") for note in proposal.notes)


APP_TEST = '''\
import os

import psycopg


def test_the_app_builds_its_schema_on_the_branch():
    url = os.environ["BUDGET_TEST_DATABASE_URI"]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE project (id text PRIMARY KEY)")
        conn.execute("INSERT INTO project VALUES ('demo')")
        assert conn.execute("SELECT count(*) FROM project").fetchone() == (1,)
'''


def test_the_summary_says_the_app_builds_the_schema_when_only_names_are_mapped(
    pytester: pytest.Pytester,
) -> None:
    """What init proposes for this shape (a mapping, no service) runs: the branch starts
    empty, the app's own code builds its schema there, and the summary says so instead of
    pointing back at init, which has nothing more to propose."""
    pytester.makepyprojecttoml(
        '[tool.cathouse_harness]\n\n[tool.cathouse_harness.env]\n'
        'BUDGET_TEST_DATABASE_URI = "{url:libpq}"\n'
    )
    pytester.makepyfile(test_app=APP_TEST)
    result = pytester.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*no service has migrations, so the branch starts empty: its schema is what the tests "
        "create through BUDGET_TEST_DATABASE_URI"
    ])
    result.stdout.no_fnmatch_line("*cathouse-branch init*")
