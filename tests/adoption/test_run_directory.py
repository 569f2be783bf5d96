"""Where a service's Alembic runs from (#23 part 6), and an env.py that hands on
SQLAlchemy's masked password (#23 part 8)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.cli.project_init import propose
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError, SafetyError
from cathouse_harness.migrate.all_services import migrate_all

from tests.adoption import _plugin_host as host
from tests.adoption.conftest import tables_of

# `alembic -c svc/alembic.ini upgrade head`, run from the repository root: the ini's paths
# are written from there
ROOT_RELATIVE_INI = """
[alembic]
script_location = svc/migrations
path_separator = os
sqlalchemy.url = postgresql://nobody@localhost/svc
"""


def root_relative(root: Path, directory: str | None) -> Path:
    host.write(root / "svc" / "alembic.ini", ROOT_RELATIVE_INI)
    host.write(root / "svc" / "migrations" / "env.py", host.ENV_PY)
    host.revision(root / "svc" / "migrations" / "versions", "d1d1d1d1d1d1",
                  'op.create_table("svc_items", sa.Column("id", sa.Integer, primary_key=True), '
                  'schema="app")', 'op.drop_table("svc_items", schema="app")')
    lines = ['[project]', 'name = "mono"', 'version = "0"', "", "[tool.cathouse_harness]", "",
             "[[tool.cathouse_harness.services]]", 'name = "svc"', 'schema = "app"',
             'alembic_ini = "svc/alembic.ini"']
    if directory is not None:
        lines.append(f"directory = {directory!r}")
    host.write(root / "pyproject.toml", "\n".join(lines) + "\n")
    return root


def test_directory_runs_alembic_where_its_paths_start(tmp_path: Path, fresh_database_url: str) -> None:
    root = root_relative(tmp_path / "mono", ".")
    [result] = migrate_all(load_settings(root, environ={}), fresh_database_url)
    assert result.after == "d1d1d1d1d1d1"
    assert "app.svc_items" in tables_of(fresh_database_url)


def test_without_directory_one_line_names_the_directory_to_set(
    tmp_path: Path, fresh_database_url: str
) -> None:
    root = root_relative(tmp_path / "mono", None)
    with pytest.raises(ConfigError) as caught:
        migrate_all(load_settings(root, environ={}), fresh_database_url)
    assert str(caught.value) == (
        f"services[svc].directory (from {root / 'pyproject.toml'} [tool.cathouse_harness]): "
        f"script_location svc/migrations does not exist from {root / 'svc'} but does from {root} "
        '(set directory = "." in its [[tool.cathouse_harness.services]] entry)'
    )


def test_init_writes_the_directory_where_script_location_resolves(
    tmp_path: Path, fresh_database_url: str
) -> None:
    root = root_relative(tmp_path / "mono", None)
    (root / "pyproject.toml").write_text('[project]\nname = "mono"\nversion = "0"\n')
    proposal = propose(root)
    [service] = proposal.services
    assert (service.alembic_ini, service.directory) == ("svc/alembic.ini", ".")
    assert any(note.startswith("directory '.': script_location svc/migrations resolves from there")
               for note in service.notes)
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["init", "--project-dir", str(root), "--yes"], out=out, err=err) == 0, err.getvalue()
    assert 'directory = "."' in (root / "pyproject.toml").read_text()
    [result] = migrate_all(load_settings(root, environ={}), fresh_database_url)
    assert result.after == "d1d1d1d1d1d1"
    # an ini whose paths start at its own directory gets no `directory`
    [plain] = propose(host.build(tmp_path / "plain", target='"heads"')).services
    assert plain.directory is None


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("directory", '"nowhere"', "services[svc].directory (from "),
    ("target", "3", "services[svc].target (from "),
    ("target", "[]", "services[svc].target (from "),
])
def test_bad_directory_or_target_is_one_line(tmp_path: Path, key: str, value: str, expected: str) -> None:
    root = root_relative(tmp_path / "mono", None)
    with (root / "pyproject.toml").open("a") as handle:
        handle.write(f"{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(root, environ={})
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


# --- #23 part 8: str(engine.url) hides the password ----------------------------------

MASKING_ENV_PY = '''
from alembic import context
from sqlalchemy import create_engine, engine_from_config, pool

config = context.config
configured = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
# the project keeps "its" URL as a string: str() of a URL renders the password as ***
url = str(configured.url)
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table_schema="app")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
'''


def test_masked_password_is_one_line_naming_str_url(tmp_path: Path, fresh_database_url: str) -> None:
    root = root_relative(tmp_path / "mono", ".")
    env_py = root / "svc" / "migrations" / "env.py"
    env_py.write_text(textwrap.dedent(MASKING_ENV_PY).lstrip())
    with pytest.raises(SafetyError) as caught:
        migrate_all(load_settings(root, environ={}), fresh_database_url)
    line = str(caught.value)
    assert "\n" not in line and caught.value.exit_code == 2
    assert line.startswith(f"service svc: {env_py} connects with the password '***': str(url)")
    assert "render_as_string(hide_password=False)" in line and "MIGRATION_DATABASE_URL" in line
    assert (urlsplit(fresh_database_url).password or "") not in line
    assert "app.svc_items" not in tables_of(fresh_database_url)
