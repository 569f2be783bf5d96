"""A server whose core and plugins ship Alembic histories into one version table.

Shaped like a FastAPI/SQLAlchemy server with installable plugins: one alembic.ini at the
project root, the core's revisions under `server/migrations/versions` and each plugin's
under `plugins/<name>/versions`, all listed in `version_locations` (relative to the
root, where its users run `alembic upgrade heads`). The plugins' histories start at
base with a branch label each, so the project has three heads; alpha's first revision
`depends_on` a core revision (its table points into the core's). Every revision keeps its
tables in the schema `app`, where env.py also keeps the one version table. With `icu`, the
core's second revision also creates a case-insensitive ICU collation and types its
column with it (as Neon allows and the wheel's PostgreSQL, built without ICU, cannot).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

SCHEMA = "app"
HEADS = ("a1a1a1a1a1a1", "b1b1b1b1b1b1", "c2c2c2c2c2c2")
TABLES = {f"{SCHEMA}.core_items", f"{SCHEMA}.alpha_notes", f"{SCHEMA}.beta_things"}

ENV_PY = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run(connection):
    context.configure(connection=connection, version_table_schema="app",
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(connection)
        connection.commit()
'''

INI = """
[alembic]
script_location = server/migrations
version_locations = server/migrations/versions plugins/alpha/versions plugins/beta/versions
path_separator = space
sqlalchemy.url = postgresql://nobody@localhost/server
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def revision(directory: Path, rev: str, upgrade: str, downgrade: str, *, down: str | None = None,
             labels: tuple[str, ...] = (), depends_on: str | None = None) -> Path:
    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    path = directory / f"{rev}_revision.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'"""revision {rev}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f"revision = {rev!r}\ndown_revision = {down!r}\n"
        f"branch_labels = {labels or None!r}\ndepends_on = {depends_on!r}\n\n\n"
        f"def upgrade():\n{body(upgrade)}\n\n\ndef downgrade():\n{body(downgrade)}\n",
        encoding="utf-8",
    )
    return path


# c2's upgrade and downgrade with the ICU collation
ICU_UPGRADE = """
op.execute("CREATE COLLATION app.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
op.execute("ALTER TABLE app.core_items ADD COLUMN title text COLLATE app.ci")
"""
ICU_DOWNGRADE = """
op.drop_column("core_items", "title", schema="app")
op.execute("DROP COLLATION app.ci")
"""


def build(root: Path, *, target: str | None = None, icu: bool = False) -> Path:
    """The project at `root`; `target` is written as the service's TOML value when given
    (`'"heads"'`, `'["core@head"]'`)."""
    write(root / "alembic.ini", INI)
    write(root / "server" / "migrations" / "env.py", ENV_PY)
    core = root / "server" / "migrations" / "versions"
    revision(core, "c1c1c1c1c1c1",
             'op.create_table("core_items", sa.Column("id", sa.Integer, primary_key=True), '
             'schema="app")',
             'op.drop_table("core_items", schema="app")', labels=("core",))
    if icu:
        revision(core, "c2c2c2c2c2c2", ICU_UPGRADE, ICU_DOWNGRADE, down="c1c1c1c1c1c1")
    else:
        revision(core, "c2c2c2c2c2c2",
                 'op.add_column("core_items", sa.Column("title", sa.Text), schema="app")',
                 'op.drop_column("core_items", "title", schema="app")', down="c1c1c1c1c1c1")
    revision(root / "plugins" / "alpha" / "versions", "a1a1a1a1a1a1",
             'op.create_table("alpha_notes", sa.Column("id", sa.Integer, primary_key=True), '
             'sa.Column("item_id", sa.Integer, sa.ForeignKey("app.core_items.id")), schema="app")',
             'op.drop_table("alpha_notes", schema="app")', labels=("alpha",),
             depends_on="c1c1c1c1c1c1")
    revision(root / "plugins" / "beta" / "versions", "b1b1b1b1b1b1",
             'op.create_table("beta_things", sa.Column("id", sa.Integer, primary_key=True), '
             'schema="app")',
             'op.drop_table("beta_things", schema="app")', labels=("beta",))
    lines = ['[project]', 'name = "plugin-host"', 'version = "0"', "",
             "[tool.cathouse_harness]", 'parent_branch = "main"', "",
             "[[tool.cathouse_harness.services]]", 'name = "server"', f'schema = "{SCHEMA}"',
             'alembic_ini = "alembic.ini"']
    if target is not None:
        lines.append(f"target = {target}")
    write(root / "pyproject.toml", "\n".join(lines) + "\n")
    return root


# A test file for a pytester project built here: every history migrated to its head in
# the one version table; `check` is more of the test's body, inside the connection.
PLUGIN_TEST = '''
import uuid

import psycopg


def test_every_history_migrated(migration_database_url):
    with psycopg.connect(migration_database_url) as connection:
        rows = connection.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
        versions = connection.execute("SELECT version_num FROM app.alembic_version").fetchall()
        {check}
    assert {tables!r} <= {{row[0] for row in rows}}
    assert sorted(row[0] for row in versions) == {heads!r}
'''


def plugin_test(check: str = "pass") -> str:
    return PLUGIN_TEST.format(tables=TABLES, heads=list(HEADS), check=check)
