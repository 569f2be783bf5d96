"""`cathouse-branch up` puts the seed into the developer's branch when it makes it (and
`reset` again, the branch being back at its parent), never into one it reuses."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.config.envfile import read_env_file

from tests.cli._support import cli, error_lines
from tests.plugin._seed import REFERENCE_SQL, configure_seed
from tests.plugin._support import copy_example


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def _emails(project: Path) -> list[str]:
    url = read_env_file(project / ".env")["MIGRATION_DATABASE_URL"]
    with psycopg.connect(url) as connection:
        return sorted(row[0] for row in connection.execute("SELECT email FROM auth.users"))


def _dev_branches(project: Path) -> list[str]:
    code, out, err = cli("list", "--json", cwd=project)
    assert code == 0, err
    return [b["name"] for b in json.loads(out)["branches"] if b["name"].startswith("harness/dev/")]


def test_up_seeds_a_new_branch_once_and_reset_seeds_it_again(project: Path) -> None:
    configure_seed(project, suffix=".dev")
    seeded = ["call-after-2@seed.dev", "sql-1@seed", "sql-2@seed"]
    code, out, err = cli("up", "--json", "--name", "seed-up", cwd=project)
    assert code == 0, err
    assert _emails(project) == seeded
    # reused: seeding again would break the unique emails, and would double the rows
    code, out, err = cli("up", "--json", "--name", "seed-up", cwd=project)
    assert code == 0 and json.loads(out)["created"] is False, err
    assert _emails(project) == seeded
    code, out, err = cli("reset", cwd=project)
    assert code == 0, err
    assert _emails(project) == seeded
    assert cli("down", cwd=project)[0] == 0


def test_up_with_a_failing_seed_is_one_line_and_keeps_no_branch(project: Path) -> None:
    configure_seed(project, suffix=".devbroken")
    (project / "sql" / "reference.sql").write_text(REFERENCE_SQL + "SELECT 1/0;\n")
    code, out, err = cli("up", "--name", "seed-broken", cwd=project)
    assert code == 1
    (line,) = error_lines(err)
    assert "seed sql/reference.sql failed: DivisionByZero [22012]: division by zero" in line, err
    assert "Traceback" not in err
    assert "harness/dev/seed-broken" not in _dev_branches(project)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("seeding:load", "cannot import seeding:load (RuntimeError: no database for you)"),
        ("seeding:nothing", "seeding has no function 'nothing'"),
    ],
)
def test_up_with_an_unusable_callable_exits_2(project: Path, setting: str, expected: str) -> None:
    configure_seed(project, f'seed = ["{setting}"]\n')
    (project / "seeding.py").write_text("raise RuntimeError('no database for you')\n"
                                        if setting.endswith(":load") else "def load(c): pass\n")
    code, out, err = cli("up", "--name", "seed-unimportable", cwd=project)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("cathouse-branch: error: seed (from ")
    assert "pyproject.toml [tool.cathouse_harness]" in line
    assert expected in line
    assert "harness/dev/seed-unimportable" not in _dev_branches(project)
