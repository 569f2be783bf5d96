"""Item 8: the role password never reaches pytest's failure output or JUnit XML.

Three failing tests put it where people do: printed, in an assertion on the URL, in an
exception message; `-l` adds every local (one of them the bare password). The run's
terminal output and its JUnit XML hold it nowhere, in plain or URL-encoded form, nor any
8 characters of it (pytest abbreviates long values to their ends); with
`--cathouse-show-secrets` they do (which shows the test can see it at all).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from tests.security._support import MINIMAL_PYPROJECT

FAILING_TESTS = """
import os
import pathlib
from urllib.parse import unquote, urlsplit


def _password(url):
    return unquote(urlsplit(url).password)


def test_prints_the_url(database_url):
    password = _password(database_url)
    pathlib.Path(os.environ["PASSWORD_FILE"]).write_text(password)
    print("connecting to", database_url, "with", password)
    assert False


def test_asserts_on_the_url(migration_database_url):
    password = _password(migration_database_url)
    assert migration_database_url == "postgresql://somewhere-else/" + password


def test_raises_with_the_url(neon_branch):
    password = _password(neon_branch.direct_url)
    raise RuntimeError(f"cannot use {neon_branch.direct_url} (password {password})")
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject=MINIMAL_PYPROJECT)
    pytester.makepyfile(test_leaky=FAILING_TESTS)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PASSWORD_FILE", str(pytester.path / "password.txt"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester


def _hits(project: pytest.Pytester, *extra: str) -> tuple[int, int]:
    junit = project.path / "junit.xml"
    result = project.runpytest_subprocess(
        "-p", "cathouse_harness", "-p", "no:cacheprovider", "-l", "-rA", f"--junitxml={junit}", *extra
    )
    result.assert_outcomes(failed=3)
    password = (project.path / "password.txt").read_text()
    forms = {password, quote(password, safe="")}
    # pytest abbreviates long values ('postgresql:/...<the password's last characters>')
    forms |= {password[i : i + 8] for i in range(len(password) - 7)}
    terminal = result.stdout.str() + result.stderr.str()
    xml = junit.read_text()
    return sum(terminal.count(f) for f in forms), sum(xml.count(f) for f in forms)


def test_failing_tests_show_no_password(project: pytest.Pytester) -> None:
    assert _hits(project) == (0, 0)


def test_show_secrets_shows_them(project: pytest.Pytester) -> None:
    in_terminal, in_xml = _hits(project, "--cathouse-show-secrets")
    assert in_terminal > 0 and in_xml > 0


def test_scrubbed_report_keeps_its_shape(project: pytest.Pytester) -> None:
    # the failure still names the test, the line and the assertion, only the secret is gone
    result = project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider", "-q")
    result.stdout.fnmatch_lines([
        "*def test_asserts_on_the_url(migration_database_url):*",
        "*AssertionError*",
        "*RuntimeError: cannot use postgresql://*:***@*",
    ])
    assert Path(project.path / "password.txt").exists()
