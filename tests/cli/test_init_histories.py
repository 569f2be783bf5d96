"""`cathouse-branch init` sees every history Alembic would (issue #28): histories joined
through version_locations (a plugin package's directory among them), a plugin's own
alembic.ini whose revisions the core already reads, a pyproject.toml [tool.alembic]
without an alembic.ini; one service per version table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from cathouse_harness.config.settings import Settings, load_settings

from tests.cli._support import cli, error_lines
from tests.cli.test_init import proposed, revision

# env.py that keeps the version table where the connection's search path puts it
PLAIN_ENV = "from alembic import context\ncontext.configure(connection=None, target_metadata=None)\n"
# a package init must not import: its code runs at import
EXPLODES = 'raise RuntimeError("init imported the project\'s code")\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def labelled(versions: Path, rev: str, down: str | None, label: str | None = None,
             depends_on: str | None = None) -> None:
    """A revision file with branch_labels / depends_on, and import-time code of its own:
    Alembic would run it; init only reads the file."""
    revision(versions, rev, f'op.create_table("t_{rev}", sa.Column("id", sa.Integer))', down)
    path = versions / f"{rev}_change.py"
    text = path.read_text().replace(
        "branch_labels = None", f"branch_labels = {(label,) if label else None!r}"
    ).replace("depends_on = None", f"depends_on = {depends_on!r}")
    path.write_text(text.replace("from alembic import op\n", "from alembic import op\n" + EXPLODES, 1))


def core_with_plugins(root: Path) -> None:
    """The shape of issue #28: a core history, a plugin package joined by a resource name
    in version_locations, and a plugin with an alembic.ini of its own whose versions
    directory the core's version_locations also names."""
    write(root / "pyproject.toml", '[project]\nname = "hub"\nversion = "1"\n')
    write(root / "alembic.ini", """\
        [alembic]
        script_location = %(here)s/migrations
        prepend_sys_path = .
        path_separator = newline
        version_locations =
            %(here)s/migrations/versions
            hub_plugins.alpha:migrations/versions
            %(here)s/hub_plugins/beta/migrations/versions
    """)
    write(root / "migrations" / "env.py", PLAIN_ENV)
    labelled(root / "migrations" / "versions", "c1", None, "core")
    labelled(root / "migrations" / "versions", "c2", "c1")
    write(root / "hub_plugins" / "__init__.py", EXPLODES)
    write(root / "hub_plugins" / "alpha" / "__init__.py", EXPLODES)
    labelled(root / "hub_plugins" / "alpha" / "migrations" / "versions", "a1", None, "alpha", "c1")
    beta = root / "hub_plugins" / "beta"
    write(beta / "alembic.ini", "[alembic]\nscript_location = %(here)s/migrations\n")
    write(beta / "migrations" / "env.py", PLAIN_ENV)
    labelled(beta / "migrations" / "versions", "b1", None, "beta")
    labelled(beta / "migrations" / "versions", "b2", "b1")
    # not a revision file: Alembic skips it, so init must not count it
    write(beta / "migrations" / "versions" / "__init__.py", "")


def test_joined_histories_are_one_service_migrating_to_heads(tmp_path: Path) -> None:
    core_with_plugins(tmp_path)
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert proposed(out) == [{
        "name": "hub", "schema": "public", "alembic_ini": "alembic.ini", "pool_size": 2, "max_overflow": 1,
        "target": "heads",
    }]
    assert "5 revision(s), 3 histories, branch labels alpha, beta, core" in err
    assert 'target "heads": its revisions end in 3 heads (a1, b2, c2), all kept in one version table' in err
    assert ("hub_plugins/beta/alembic.ini: its revisions (hub_plugins/beta/migrations/versions) are read "
            "by alembic.ini through version_locations; one service") in err
    [service] = load_settings(tmp_path, environ={}).services
    assert (service.name, service.schema, service.target) == ("hub", "public", ("heads",))


def test_a_plugin_package_that_cannot_be_found_is_named(tmp_path: Path) -> None:
    core_with_plugins(tmp_path)
    ini = tmp_path / "alembic.ini"
    ini.write_text(ini.read_text().replace("hub_plugins.alpha:", "hub_plugins.gamma:"))
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    [service] = json.loads(out)["services"]
    assert service["target"] == "heads"
    assert ("version_locations entry 'hub_plugins.gamma:migrations/versions' names no directory init can "
            "find (not imported)") in err
    assert "4 revision(s), 2 histories, branch labels beta, core" in err


# what `alembic init` writes, cut down: the harness's branch comes in as sqlalchemy.url
SHOP_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                            poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table_schema="shop")
    with context.begin_transaction():
        context.run_migrations()
"""


def test_pyproject_tool_alembic_without_an_alembic_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject = write(tmp_path / "pyproject.toml", """\
        [project]
        name = "shop"
        version = "0.1"

        [tool.alembic]
        script_location = "%(here)s/db"
    """)
    write(tmp_path / "db" / "env.py", SHOP_ENV)
    versions = tmp_path / "db" / "versions"
    revision(versions, "s1", 'op.create_table("orders", sa.Column("id", sa.Integer))')
    revision(versions, "s2", 'op.create_table("items", sa.Column("id", sa.Integer))', "s1")
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert proposed(out) == [
        {"name": "shop", "schema": "shop", "alembic_ini": "pyproject.toml", "pool_size": 2, "max_overflow": 1}
    ]
    assert "script_location db (from pyproject.toml [tool.alembic])" in err
    assert "2 revision(s), 1 history" in err
    assert "[tool.alembic]" in pyproject.read_text()  # the table went in beside it
    [service] = load_settings(tmp_path, environ={}).services
    assert service.alembic_ini == pyproject.resolve()
    # and the harness migrates it from there
    suite_home_names(monkeypatch)
    code, out, err = cli("up", "--json", "--name", "init-pyproject", cwd=tmp_path)
    assert code == 0, err
    assert [(m["service"], m["before"], m["after"]) for m in json.loads(out)["migrations"]] == [
        ("shop", None, "s2")
    ]
    code, out, err = cli("down", "init-pyproject", cwd=tmp_path)
    assert code == 0, err


def test_histories_sharing_a_version_table_are_not_two_services(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write(tmp_path / name / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
        write(tmp_path / name / "alembic" / "env.py", PLAIN_ENV)
        revision(tmp_path / name / "alembic" / "versions", f"{name}1",
                 f'op.create_table("t", sa.Column("id", sa.Integer), schema="{name}")')
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert [s["name"] for s in proposed(out)] == ["one"]
    assert ("two/alembic.ini left out: it keeps its revisions in the same version table as one/alembic.ini "
            "(alembic_version on the search path)") in err
    assert [s.name for s in load_settings(tmp_path, environ={}).services] == ["one"]


def test_a_second_claim_on_a_schema_is_left_out_not_written_and_refused(tmp_path: Path) -> None:
    for name, table in (("one", "alembic_version"), ("two", "two_version")):
        write(tmp_path / name / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
        write(tmp_path / name / "alembic" / "env.py",
              f'from alembic import context\ncontext.configure(version_table="{table}")\n')
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0 and not error_lines(err), err
    assert [s["name"] for s in proposed(out)] == ["one"]
    assert "two/alembic.ini left out: schema 'public' is already one/alembic.ini's" in err


def test_a_schema_the_harness_would_refuse_is_not_proposed(tmp_path: Path) -> None:
    write(tmp_path / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(tmp_path / "alembic" / "env.py",
          'from alembic import context\ncontext.configure(version_table_schema="shop-data")\n')
    write(tmp_path / "audit" / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(tmp_path / "audit" / "alembic" / "env.py",
          'from alembic import context\ncontext.configure(version_table_schema="audit")\n')
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0 and not error_lines(err), err
    assert [s["schema"] for s in proposed(out)] == ["audit"]
    assert "alembic.ini left out: its schema 'shop-data' is not a plain SQL identifier" in err


def test_histories_in_named_sections_of_one_ini_are_named(tmp_path: Path) -> None:
    """`alembic --name core` reads [core]; the harness runs [alembic], so init says so."""
    write(tmp_path / "alembic.ini", """\
        [core]
        script_location = %(here)s/revisions/core

        [tenant]
        script_location = %(here)s/revisions/tenant
    """)
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 2 and out == "" and len(error_lines(err)) == 1
    assert ("skipped alembic.ini: it has no [alembic] script_location, but sections core, tenant have one "
            "(`alembic --name …`)") in err


def test_the_joined_histories_migrate_to_their_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init's one service with target "heads" is what `up` needs (with heads28's runner)."""
    core_with_plugins(tmp_path)
    for path in tmp_path.rglob("*.py"):  # Alembic imports what init only read
        path.write_text(path.read_text().replace(EXPLODES, ""))
    ini = tmp_path / "alembic.ini"  # a resource would need the harness to import hub_plugins
    ini.write_text(ini.read_text().replace("hub_plugins.alpha:", "%(here)s/hub_plugins/alpha/"))
    (tmp_path / "migrations" / "env.py").write_text(MIGRATING_ENV)
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    suite_home_names(monkeypatch)
    code, out, err = cli("up", "--json", "--name", "init-heads", cwd=tmp_path)
    assert code == 0, err
    assert [(m["service"], m["before"], m["after"]) for m in json.loads(out)["migrations"]] == [
        ("hub", None, "a1,b2,c2")
    ]
    assert cli("down", "init-heads", cwd=tmp_path)[0] == 0


def suite_home_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """init proposed Neon's names (the project names none); the suite's one home keeps the
    project its first test made, with the harness's defaults, and a home holds one project."""
    monkeypatch.setenv("CATHOUSE_DATABASE", Settings.database)
    monkeypatch.setenv("CATHOUSE_ROLE", Settings.role)


MIGRATING_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                            poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""
