"""`seed`: reference data put into the template after the migrations, so that every
session starts with it at fork cost (`cathouse_harness.migrate.seed`)."""

from __future__ import annotations

import asyncio
from fnmatch import fnmatch

import pytest
from cathouse_harness.branching.fingerprint import migration_fingerprint
from cathouse_harness.branching.lifecycle import building_name, harness_branches, template_branch_name
from cathouse_harness.config.settings import load_settings
from cathouse_harness.neon.backend import connect_backend, open_client

from tests.plugin._seed import REFERENCE_SQL, configure_seed
from tests.plugin._support import run

SEES_THE_SEED = """
import psycopg, pytest

@pytest.mark.parametrize("n", range({count}))
def test_sees_the_seed(migration_database_url, n):
    with psycopg.connect(migration_database_url) as connection:
        emails = sorted(r[0] for r in connection.execute("SELECT email FROM auth.users"))
    assert emails == {expected!r}
"""
SEEDED = ["call-after-2@seed", "sql-1@seed", "sql-2@seed"]


def _test_file(project: pytest.Pytester, expected: list[str], count: int = 1) -> None:
    project.makepyfile(test_seeded=SEES_THE_SEED.format(expected=expected, count=count))


def _template_line(result: pytest.RunResult) -> str:
    lines = [line for line in result.outlines if "template harness/template/" in line]
    assert len(lines) == 1, result.outlines
    return "built" if "built by this run" in lines[0] else "reused" if "reused" in lines[0] else lines[0]


def _templates_of(project: pytest.Pytester) -> list[str]:
    """The ready or building template branches of the project's current fingerprint."""
    settings = load_settings(project.path)
    name = template_branch_name(migration_fingerprint(settings), settings.parent_branch)
    backend = connect_backend(settings)

    async def listed() -> list[str]:
        async with open_client(backend) as client:
            found = await harness_branches(client, backend.project_id)
        return sorted(b.name for b in found if b.name in (name, building_name(name)))

    return asyncio.run(listed())


def test_seed_is_in_every_session_and_an_edit_rebuilds_the_template_once(
    project: pytest.Pytester,
) -> None:
    configure_seed(project.path)
    _test_file(project, SEEDED)
    first = run(project, "seed1")
    first.assert_outcomes(passed=1)
    assert _template_line(first) == "built"

    # an edited SQL file: one build, then reuse
    (project.path / "sql" / "reference.sql").write_text(
        REFERENCE_SQL + "INSERT INTO auth.users (email) VALUES ('sql-3@seed');\n")
    _test_file(project, ["call-after-3@seed", "sql-1@seed", "sql-2@seed", "sql-3@seed"])
    results = [run(project, "seed2"), run(project, "seed3")]
    for result in results:
        result.assert_outcomes(passed=1)
    assert [_template_line(r) for r in results] == ["built", "reused"]
    # (an edited callable's module changes the fingerprint too: tests/unit/test_seed_setting.py)


def test_xdist_workers_see_the_seed(project: pytest.Pytester) -> None:
    configure_seed(project.path, suffix=".xdist")
    _test_file(project, ["call-after-2@seed.xdist", "sql-1@seed", "sql-2@seed"], count=4)
    run(project, "seedx1", "-n", "2").assert_outcomes(passed=4)


def test_a_session_made_before_the_conftests_gets_the_seed_from_the_child_process(
    project: pytest.Pytester,
) -> None:
    # an env mapping makes the branch before the conftests load: the migrations, and the
    # seed's callable with them, run in a Python process of their own
    configure_seed(project.path, suffix=".early")
    with (project.path / "pyproject.toml").open("a") as handle:
        handle.write('\n[tool.cathouse_harness.env]\nAPP_DATABASE_URL = "{url}"\n')
    _test_file(project, ["call-after-2@seed.early", "sql-1@seed", "sql-2@seed"])
    result = run(project, "seedearly1")
    result.assert_outcomes(passed=1)
    assert _template_line(result) == "built"


def test_a_failing_seed_is_one_line_and_leaves_no_template(project: pytest.Pytester) -> None:
    configure_seed(project.path, suffix=".broken")
    (project.path / "sql" / "reference.sql").write_text(
        REFERENCE_SQL + "INSERT INTO auth.no_such_table VALUES (1);\n")
    _test_file(project, SEEDED)
    result = run(project, "seedbad1")
    assert result.ret != 0
    lines = [line for line in result.outlines + result.errlines if "seed sql/reference.sql failed" in line]
    assert len(lines) == 1, result.outlines + result.errlines
    assert "[42P01]" in lines[0] and "no_such_table" in lines[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert _templates_of(project) == []


@pytest.mark.parametrize(
    ("setting", "module", "expected"),
    [
        ('seed = ["sql/missing.sql"]\n', None, "*'sql/missing.sql' is neither a file under *"),
        ('seed = ["no_such_module:load"]\n', None, "*cannot find module 'no_such_module'*"),
        ('seed = ["seeding:load"]\n', "import no_such_package\n",
         "*cannot import seeding:load (ModuleNotFoundError: No module named 'no_such_package')*"),
    ],
)
def test_a_bad_seed_setting_is_one_line_and_a_usage_error(
    project: pytest.Pytester, setting: str, module: str | None, expected: str
) -> None:
    configure_seed(project.path, setting)
    if module is not None:
        (project.path / "seeding.py").write_text(module)
    _test_file(project, SEEDED)
    result = run(project, "seedcfg")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # pytest's code for a bad configuration
    output = result.outlines + result.errlines
    matching = [line for line in output if "seed (from " in line]
    assert len(matching) == 1, output
    assert "pyproject.toml [tool.cathouse_harness]" in matching[0]
    assert fnmatch(matching[0], expected), matching[0]
    assert "Traceback" not in "\n".join(output)


def test_without_template_reuse_each_session_branch_is_seeded(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_seed(project.path, suffix=".noreuse")
    monkeypatch.setenv("CATHOUSE_TEMPLATE_REUSE", "false")
    _test_file(project, ["call-after-2@seed.noreuse", "sql-1@seed", "sql-2@seed"])
    run(project, "seednoreuse1").assert_outcomes(passed=1)
