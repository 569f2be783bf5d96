"""A project's own fixture that shadows one of ours is named once, with the way to feed it
the branch (`neon_branch`, the name we keep stable): after collection without xdist, in
the summary under xdist (whose controller collects nothing; its workers hand it over)."""

from __future__ import annotations

import pytest

from tests.plugin._support import run

OWN_FIXTURE = '''
import pytest

@pytest.fixture(scope="session")
def database_url():
    return "postgresql://someone@elsewhere/db"
'''


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_shadowed_fixture_is_named_once_with_its_place(project: pytest.Pytester, workers: str) -> None:
    conftest = project.path / "conftest.py"
    conftest.write_text(OWN_FIXTURE)
    line = conftest.read_text().splitlines().index("def database_url():")  # 0-based: decorator above
    # several tests, so that under -n 2 both workers collect the shadow and report it
    project.makepyfile(test_own="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_own(database_url, n):
    assert 'elsewhere' in database_url
""")
    result = run(project, f"shadow1-n{workers}", "-n", workers, "test_own.py")
    result.assert_outcomes(passed=4)
    shadowed = [x for x in result.outlines if "shadows the harness's" in x]
    assert len(shadowed) == 1, result.outlines
    assert f"`database_url` (conftest.py:{line})" in shadowed[0]
    assert "neon_branch.database_url" in shadowed[0]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_nothing_is_said_without_a_shadow(project: pytest.Pytester, workers: str) -> None:
    project.makepyfile(test_ours="def test_ours(database_url):\n    pass\n")
    result = run(project, f"shadow2-n{workers}", "-n", workers, "--collect-only", "test_ours.py")
    assert not [x for x in result.outlines if "shadows" in x]
    assert any(x.startswith("cathouse-harness:") for x in result.outlines)
