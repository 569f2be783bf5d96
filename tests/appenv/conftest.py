"""The project's own variables on the branch: the Cat House example in pytester, with an
[tool.cathouse_harness.env] table appended to its pyproject.toml by each test."""

from __future__ import annotations

import pytest

from tests.plugin._support import copy_example


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    copy_example(pytester.path)
    monkeypatch.setenv("CI", "true")  # keep-branch default: never
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
                 "CATHOUSE_XDIST_OWNER"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def add_toml(project: pytest.Pytester, text: str) -> None:
    path = project.path / "pyproject.toml"
    path.write_text(path.read_text() + "\n" + text)


def add_top_key(project: pytest.Pytester, line: str) -> None:
    """A key of [tool.cathouse_harness] itself (appended, it would land in the last service)."""
    path = project.path / "pyproject.toml"
    text = path.read_text()
    first = text.index("[[tool.cathouse_harness.services]]")
    path.write_text(text[:first] + line + "\n\n" + text[first:])
