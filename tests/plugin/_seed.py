"""A project's `seed` for the tests of it (tests/plugin/test_seed.py, tests/cli/test_seed_cli.py):
a SQL file of two users and a callable that adds a third, named after what it found."""

from __future__ import annotations

from pathlib import Path

SEED_SETTING = 'seed = ["sql/reference.sql", "seeding:load"]\n'
REFERENCE_SQL = """
INSERT INTO auth.users (email) VALUES ('sql-1@seed');
INSERT INTO auth.users (email) VALUES ('sql-2@seed');
"""
# the callable runs after the SQL files: it sees their rows
SEEDING = """
from sqlalchemy import text

def load(connection):
    before = connection.execute(text("SELECT count(*) FROM auth.users")).scalar()
    connection.execute(text("INSERT INTO auth.users (email) VALUES (:email)"),
                       {{"email": f"call-after-{{before}}@seed{suffix}"}})
"""


def configure_seed(project: Path, setting: str = SEED_SETTING, *, suffix: str = "") -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace("[tool.cathouse_harness]\n", "[tool.cathouse_harness]\n" + setting, 1))
    (project / "sql").mkdir(exist_ok=True)
    (project / "sql" / "reference.sql").write_text(REFERENCE_SQL)
    (project / "seeding.py").write_text(SEEDING.format(suffix=suffix))
