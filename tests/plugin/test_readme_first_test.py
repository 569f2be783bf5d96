"""README's "A first test" passes as written: its sync and async tests, in a project
configured like the Cat House example (which sets asyncio_mode = "auto" as README says)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.plugin._support import run

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_first_tests_in_the_readme_pass(project: pytest.Pytester) -> None:
    section = README.read_text(encoding="utf-8").split("\n## A first test\n", 1)[1].split("\n## ", 1)[0]
    tests = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(tests) == 2 and 'asyncio_mode = "auto"' in section
    project.makepyfile(test_first="\n\n".join(tests))
    result = run(project, "readme-first", "-q")
    result.assert_outcomes(passed=2)
