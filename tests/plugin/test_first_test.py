"""A user's first tests, as a newcomer writes them (issue 26, part 3): a sync test, an
`async def` test and an async fixture, in a project that configures the harness and
says nothing about pytest-asyncio, run on a cold home (its server starts during the
first test) with every warning an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugin._support import home_of_its_own, run

FIRST_TESTS = '''
import pytest
from sqlalchemy import text


def test_sync(migration_database_url):
    assert migration_database_url.startswith("postgresql")


@pytest.fixture
async def answer():
    return 42


async def test_async(db_session, answer):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == answer - 41
'''


def _without_asyncio_settings(project: pytest.Pytester) -> None:
    pyproject = project.path / "pyproject.toml"
    text = pyproject.read_text()
    for line in ('asyncio_mode = "auto"\n', 'asyncio_default_fixture_loop_scope = "function"\n'):
        assert line in text  # the example's; a newcomer's project has neither
        text = text.replace(line, "")
    pyproject.write_text(text)
    (project.path / "tests").mkdir()


def test_first_tests_pass_as_written_with_warnings_as_errors(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_asyncio_settings(project)
    (project.path / "tests" / "test_first.py").write_text(FIRST_TESTS)
    # every ResourceWarning shown, those after pytest's end too (its -W does not reach them)
    with home_of_its_own(tmp_path, monkeypatch, PYTHONWARNINGS="always::ResourceWarning"):
        result = run(project, "first-tests", "-W", "error", "tests/test_first.py")
    assert result.ret == 0, result.stdout.str()
    assert "ResourceWarning" not in result.stdout.str() + result.stderr.str(), result.stderr.str()
    result.assert_outcomes(passed=2)
    # pytest-asyncio's own header line says which mode it runs in
    assert "mode=auto" in result.stdout.str() or "mode=Mode.AUTO" in result.stdout.str()


def test_a_project_that_chose_strict_mode_keeps_it(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject = project.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('asyncio_mode = "auto"', 'asyncio_mode = "strict"'))
    (project.path / "tests").mkdir()
    (project.path / "tests" / "test_strict.py").write_text(
        "async def test_unmarked():\n    pass\n"
    )
    result = run(project, "strict-kept", "--collect-only", "tests/test_strict.py")
    assert "mode=strict" in result.stdout.str() or "mode=Mode.STRICT" in result.stdout.str(), \
        result.stdout.str()
