"""The plugin's end-to-end tests share one project: the Cat House example, in pytester."""

from __future__ import annotations

import pytest

from tests.plugin._support import copy_example


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    copy_example(pytester.path)
    monkeypatch.setenv("CI", "true")  # keep-branch default: never
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester
