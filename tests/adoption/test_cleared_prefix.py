"""A project whose fixtures plugin clears its own prefix from pytest_configure (seen in a
public FastAPI server with plugin migrations: every QUETZ_* goes, so that a shell's
settings stay out of its tests) and whose own `database_url` fixture reads its test
database from one of those names, falling back to SQLite. Mapped onto the branch in
[tool.cathouse_harness.env], the name is gone before the first test: without the harness
setting it again, the suite passes on SQLite and never touches the branch.

Ours, shaped after what we met; not their code."""

from __future__ import annotations

import pytest

from tests.adoption import _plugin_host as host
from tests.adoption.conftest import run_plugin

FIXTURES = '''
import os

import pytest


def pytest_configure(config):
    # the shell's APP_* settings stay out of the tests, as the project intends
    for name in [n for n in os.environ if n.startswith("APP_")]:
        del os.environ[name]


@pytest.fixture
def database_url():
    return os.environ.get("APP_TEST_DATABASE", "sqlite:///:memory:")
'''

TEST = '''
import psycopg
import pytest


@pytest.mark.parametrize("n", range(2))
def test_reaches_the_branch(database_url, n):
    assert database_url.startswith("postgresql://"), database_url
    with psycopg.connect(database_url) as connection:
        versions = connection.execute("SELECT version_num FROM app.alembic_version").fetchall()
    assert len(versions) == 3
'''


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_mapped_name_the_project_clears_is_set_again_and_said_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    root = host.build(pytester.path, target='"heads"')
    with (root / "pyproject.toml").open("a") as handle:
        handle.write('\n[tool.cathouse_harness.env]\nAPP_TEST_DATABASE = "{url:libpq}"\n')
    pytester.makepyfile(app_fixtures=FIXTURES, test_app=TEST)
    pytester.makeconftest('pytest_plugins = ["app_fixtures"]\n')
    result = run_plugin(pytester, monkeypatch, f"cleared-prefix-n{workers}", workers)
    result.assert_outcomes(passed=2)
    restored = [line for line in result.outlines if "had been removed" in line]
    assert len(restored) == 1, "\n".join(result.outlines)
    assert restored[0].startswith("cathouse-harness: APP_TEST_DATABASE (set for the branch from ")
    shadowed = [line for line in result.outlines if "shadows the harness's" in line]
    assert len(shadowed) == 1 and "`database_url` (app_fixtures.py:" in shadowed[0]
