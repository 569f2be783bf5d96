"""`cathouse-branch init` on projects built at test time: from `alembic init` templates
and hand-written env.py files, with cross-schema foreign keys, written with --yes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError

from tests.adoption._projects import SHAPES
from tests.cli._support import cli, error_lines
from tests.plugin._support import copy_example

ALEMBIC = Path(sys.executable).parent / "alembic"
PLAIN_INI = "[alembic]\nscript_location = %(here)s/alembic\npath_separator = os\n"


def alembic_init(directory: Path, template: str, script_dir: str = "alembic") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    command = [str(ALEMBIC)] if ALEMBIC.exists() else [sys.executable, "-m", "alembic"]
    subprocess.run(
        [*command, "init", "-t", template, script_dir], cwd=directory, check=True, capture_output=True
    )


def own_version_table(script_dir: Path, schema: str) -> None:
    """Give a template's env.py a version table of its own: two Alembic setups sharing one
    would each stop at the other's revisions, and init proposes only the first of them."""
    env_py = script_dir / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "context.configure(", f"context.configure(version_table_schema={schema!r}, "
    ))


def revision(versions: Path, rev: str, upgrade: str, down: str | None = None) -> None:
    """A revision file as `alembic revision` writes it, with `upgrade` as its body."""
    versions.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    (versions / f"{rev}_change.py").write_text(
        f'"""change\n\nRevision ID: {rev}\n"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def hand_written(directory: Path, env_py: str = "", revisions: dict[str, str] | None = None) -> None:
    """A service with its own alembic.ini, env.py and revision files."""
    (directory / "alembic" / "versions").mkdir(parents=True)
    (directory / "alembic.ini").write_text(PLAIN_INI)
    (directory / "alembic" / "env.py").write_text(textwrap.dedent(env_py))
    for rev, upgrade in (revisions or {}).items():
        revision(directory / "alembic" / "versions", rev, upgrade)


def env_with_schema(schema: str) -> str:
    return f'from alembic import context\ncontext.configure(version_table_schema="{schema}")\n'


def proposed(out: str) -> list[dict[str, object]]:
    return tomllib.loads(out)["tool"]["cathouse_harness"]["services"]


def names(out: str) -> list[object]:
    return [s["name"] for s in proposed(out)]


# (a) real `alembic init` templates ------------------------------------------------------------


@pytest.mark.parametrize("template", ["generic", "async", "pyproject", "pyproject_async"])
def test_one_service_at_the_root(tmp_path: Path, template: str) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\nversion = "0.1"\n')
    alembic_init(tmp_path, template)
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert proposed(out) == [
        {"name": "shop", "schema": "public", "alembic_ini": "alembic.ini", "pool_size": 2, "max_overflow": 1}
    ]
    config_from = "pyproject.toml [tool.alembic]" if template.startswith("pyproject") else "alembic.ini"
    assert f"script_location alembic (from {config_from})" in err
    assert "name 'shop': [project].name in pyproject.toml" in err
    assert "nothing written" in err


def test_two_service_directories(tmp_path: Path) -> None:
    alembic_init(tmp_path / "orders-service", "generic")
    alembic_init(tmp_path / "billing-service", "pyproject", "migrations")
    own_version_table(tmp_path / "orders-service" / "alembic", "orders")
    own_version_table(tmp_path / "billing-service" / "migrations", "billing")
    revision(tmp_path / "orders-service" / "alembic" / "versions", "o1", """
        op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), schema="orders")
    """)
    revision(tmp_path / "billing-service" / "migrations" / "versions", "b1", """
        op.create_table(
            "invoices",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.orders.id")),
            schema="billing",
        )
    """)
    # Alembic setups that are not the project's own
    for ignored in (".venv/lib/python3.11/site-packages/pkg", "node_modules/pkg", "build/lib"):
        (tmp_path / ignored).mkdir(parents=True)
        (tmp_path / ignored / "alembic.ini").write_text(PLAIN_INI)
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert proposed(out) == [
        {"name": "orders-service", "schema": "orders", "alembic_ini": "orders-service/alembic.ini",
         "pool_size": 2, "max_overflow": 1},
        {"name": "billing-service", "schema": "billing", "alembic_ini": "billing-service/alembic.ini",
         "pool_size": 2, "max_overflow": 1},
    ]
    assert "script_location billing-service/migrations (from pyproject.toml [tool.alembic])" in err
    where = "orders.orders.id in billing-service/migrations/versions/b1_change.py"
    assert f"order: after orders-service ({where})" in err


def test_names_from_directories_that_say_whose_it_is(tmp_path: Path) -> None:
    for where, schema in (("services/auth", "a1"), ("legacy/auth", "a2"), ("billing/migrations", "b")):
        hand_written(tmp_path / where, env_with_schema(schema))
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert {s["name"]: s["alembic_ini"] for s in proposed(out)} == {
        "billing": "billing/migrations/alembic.ini",
        "legacy-auth": "legacy/auth/alembic.ini",
        "services-auth": "services/auth/alembic.ini",
    }
    assert "name 'legacy-auth': another service is also called 'auth'" in err


# (b) hand-written env.py ----------------------------------------------------------------------


ENV_LITERAL = """
    from alembic import context
    context.configure(connection=None, target_metadata=None, version_table_schema="accounts")
"""
ENV_CONSTANT = """
    from alembic import context
    SCHEMA: str = "inventory"

    def run() -> None:
        context.configure(
            connection=None,
            version_table_schema=SCHEMA,
            include_schemas=True,
        )
"""
ENV_EXPRESSION = """
    from alembic import context
    from app.settings import settings
    context.configure(connection=None, version_table_schema=settings.db_schema)
"""


def test_schema_from_env_py_literal_constant_or_revisions(tmp_path: Path) -> None:
    hand_written(tmp_path / "accounts", ENV_LITERAL, {
        "a1": 'op.create_table("users", sa.Column("id", sa.Integer))',  # search_path does it
    })
    hand_written(tmp_path / "billing", env_with_schema("meta"), {
        "b1": 'op.create_table("invoices", sa.Column("id", sa.Integer), schema="billing")',
    })
    hand_written(tmp_path / "inventory", ENV_CONSTANT)
    hand_written(tmp_path / "shipping", ENV_EXPRESSION, {
        "s1": 'SCHEMA = "shipping"\nop.create_table("parcels", sa.Column("id", sa.Integer), schema=SCHEMA)',
        "s2": 'op.create_table("routes", sa.Column("id", sa.Integer), schema="shipping")',
    })
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert {s["name"]: s["schema"] for s in proposed(out)} == {
        "accounts": "accounts", "billing": "billing", "inventory": "inventory", "shipping": "shipping",
    }
    assert "schema 'accounts': version_table_schema='accounts' in accounts/alembic/env.py" in err
    assert ("schema 'billing': schema= of its 1 op.create_table call(s); its version table is kept "
            "apart (version_table_schema='meta' in billing/alembic/env.py)") in err
    assert "schema 'inventory': version_table_schema=SCHEMA (= 'inventory') in inventory/alembic/" in err
    assert "version_table_schema=settings.db_schema, which init cannot evaluate" in err
    assert "schema 'shipping': schema= of its 2 op.create_table call(s)" in err


# (c) cross-schema foreign keys decide the order ------------------------------------------------


def test_order_follows_foreign_keys_not_directory_names(tmp_path: Path) -> None:
    hand_written(tmp_path / "a-installation", revisions={"i1": """
        op.create_table(
            "installations",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("cat_id", sa.Integer),
            sa.Column("user_id", sa.Integer),
            sa.ForeignKeyConstraint(["cat_id"], ["catalog.cats.id"]),
            schema="installation",
        )
        op.create_foreign_key(
            "fk_user", "installations", "users", ["user_id"], ["id"],
            source_schema="installation", referent_schema="auth",
        )
    """})
    hand_written(tmp_path / "b-catalog", revisions={"c1": """
        op.create_table(
            "cats",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("owner_id", sa.Integer, sa.ForeignKey("auth.users.id", ondelete="CASCADE")),
            schema="catalog",
        )
    """})
    hand_written(tmp_path / "c-auth", revisions={"u1": """
        op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), schema="auth")
    """})
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert [s["name"] for s in result["services"]] == ["c-auth", "b-catalog", "a-installation"]
    assert [s["schema"] for s in result["services"]] == ["auth", "catalog", "installation"]
    after = {s["name"]: s["after"] for s in result["services"]}
    assert after == {"c-auth": [], "b-catalog": ["c-auth"], "a-installation": ["c-auth", "b-catalog"]}
    assert names(result["toml"]) == ["c-auth", "b-catalog", "a-installation"]
    assert result["written"] is None


# (d) --yes writes pyproject.toml, --force replaces only the table -----------------------------


ORIGINAL = '[project]\nname = "shop"\nversion = "0.1"\n\n# keep this\n[tool.ruff]\nline-length = 100\n'


def test_yes_writes_a_table_the_harness_loads(tmp_path: Path) -> None:
    alembic_init(tmp_path / "orders-service", "generic")
    alembic_init(tmp_path / "billing-service", "async")
    own_version_table(tmp_path / "orders-service" / "alembic", "orders")
    own_version_table(tmp_path / "billing-service" / "alembic", "billing")
    revision(tmp_path / "orders-service" / "alembic" / "versions", "o1",
             'op.create_table("orders", sa.Column("id", sa.Integer), schema="orders")')
    revision(tmp_path / "billing-service" / "alembic" / "versions", "b1",
             'op.create_table("bills", sa.Column("id", sa.Integer), schema="billing")')
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(ORIGINAL)

    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert pyproject.read_text() == ORIGINAL + "\n" + out
    assert f"added [tool.cathouse_harness] in {pyproject}" in err
    settings = load_settings(tmp_path, environ={})
    loaded = [(s.name, s.schema, s.alembic_ini, s.pool_size, s.max_overflow) for s in settings.services]
    assert loaded == [
        (s["name"], s["schema"], (tmp_path / str(s["alembic_ini"])).resolve(), s["pool_size"],
         s["max_overflow"])
        for s in proposed(out)
    ]
    assert [name for name, *_ in loaded] == ["billing-service", "orders-service"]
    assert settings.connection_limit == 10

    written = pyproject.read_text()
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 2
    assert len(error_lines(err)) == 1
    assert "already has a [tool.cathouse_harness] table" in err and "--force" in err
    assert pyproject.read_text() == written

    # a third service, and content after the table: --force replaces the table and nothing else
    tail = '\n# pytest settings\n[tool.pytest.ini_options]\naddopts = "-q"\n'
    pyproject.write_text(written + tail)
    alembic_init(tmp_path / "audit-service", "generic")
    own_version_table(tmp_path / "audit-service" / "alembic", "audit")
    code, out, err = cli("init", "--yes", "--force", cwd=tmp_path)
    assert code == 0, err
    assert pyproject.read_text() == ORIGINAL + "\n" + out + tail
    assert names(out) == ["audit-service", "billing-service", "orders-service"]
    assert [s.name for s in load_settings(tmp_path, environ={}).services] == names(out)


def test_yes_creates_a_missing_pyproject(tmp_path: Path) -> None:
    hand_written(tmp_path / "svc", ENV_LITERAL)
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "pyproject.toml").read_text() == out
    assert [s.schema for s in load_settings(tmp_path, environ={}).services] == ["accounts"]


def test_force_without_yes_is_bad_usage(tmp_path: Path) -> None:
    hand_written(tmp_path / "svc", ENV_LITERAL)
    code, out, err = cli("init", "--force", cwd=tmp_path)
    assert code == 2 and len(error_lines(err)) == 1 and "--yes" in err
    assert out == ""


# (e) a cycle, and proposals the harness could not load ----------------------------------------


def test_a_cycle_is_one_line_and_keeps_directory_order(tmp_path: Path) -> None:
    hand_written(tmp_path / "svc-x", revisions={"x1": """
        op.create_table("xs", sa.Column("y_id", sa.Integer, sa.ForeignKey("y.ys.id")), schema="x")
    """})
    hand_written(tmp_path / "svc-y", revisions={"y1": """
        op.create_table("ys", sa.Column("x_id", sa.Integer, sa.ForeignKey("x.xs.id")), schema="y")
    """})
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert names(out) == ["svc-x", "svc-y"]
    cycle = [line for line in err.splitlines() if "cycle" in line]
    assert cycle == ["foreign keys form a cycle (svc-x -> svc-y -> svc-x): kept the directory order; "
                     "check the revisions"]


def test_two_templates_in_one_version_table_are_one_service(tmp_path: Path) -> None:
    """Before #28, init proposed both in schema public, then refused its own proposal."""
    alembic_init(tmp_path / "one", "generic")
    alembic_init(tmp_path / "two", "generic")
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert names(out) == ["one"]
    assert "two/alembic.ini left out: it keeps its revisions in the same version table" in err
    assert [s.name for s in load_settings(tmp_path, environ={}).services] == ["one"]


def test_no_alembic_ini_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[loggers]\nkeys = root\n")
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 2 and out == ""
    assert len(error_lines(err)) == 1 and "no Alembic configuration" in err
    assert "skipped alembic.ini: it has no script_location" in err


def test_pools_shrink_to_fit_the_connection_limit(tmp_path: Path) -> None:
    for index in range(4):
        hand_written(tmp_path / f"svc{index}", env_with_schema(f"s{index}"))
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    assert {(s["pool_size"], s["max_overflow"]) for s in proposed(out)} == {(1, 1)}
    assert "pools 1+1 each: 8 of connection_limit 10" in err


# the messages for a project with no services point at init ------------------------------------


def test_unknown_service_without_configuration_points_at_init(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    with pytest.raises(ConfigError, match="no services configured") as raised:
        settings.service("auth-service")
    assert "cathouse-branch init" in str(raised.value)


def test_plugin_summary_points_at_init_without_services(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_branch="def test_branch(neon_branch):\n    assert neon_branch.id\n")
    result = pytester.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    expected = "*no service has migrations, so the branch starts empty: `cathouse-branch init` proposes*"
    result.stdout.fnmatch_lines([expected])


# init against projects written by others ------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_agrees_with_the_tables_written_by_hand_for_tests_adoption(tmp_path: Path, shape: str) -> None:
    project = SHAPES[shape](tmp_path, "postgresql://someone:secret@127.0.0.1:9/theirs")
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    got = [
        # a root-level service is named after the project, which these projects leave generic
        ("app" if s["alembic_ini"] == "alembic.ini" else s["name"], s["schema"], s["alembic_ini"])
        for s in json.loads(out)["services"]
    ]
    assert got == project.services


def test_the_written_table_migrates_the_example(tmp_path: Path) -> None:
    """The Cat House example without its table: init --yes, then up migrates all three."""
    copy_example(tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().split("\n[tool.cathouse_harness]")[0])
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert [(s["name"], s["schema"]) for s in proposed(out)] == [
        ("auth-service", "auth"), ("catalog-service", "catalog"), ("installation-service", "installation"),
    ]
    code, out, err = cli("up", "--json", "--name", "init-example", cwd=tmp_path)
    assert code == 0, err
    migrated = json.loads(out)["migrations"]
    assert [(m["service"], m["before"]) for m in migrated] == [
        ("auth-service", None), ("catalog-service", None), ("installation-service", None),
    ]
    assert all(m["after"] for m in migrated)
    code, out, err = cli("down", "init-example", cwd=tmp_path)
    assert code == 0, err


def test_database_and_role_come_from_the_project_not_the_example(tmp_path: Path) -> None:
    """A fresh `alembic init` project names no database: init proposes Neon's names for a
    new project, never the Cat House example's; a URL the project keeps gives its own."""
    alembic_init(tmp_path / "fresh", "generic")  # its sqlalchemy.url is alembic's placeholder
    code, out, err = cli("init", cwd=tmp_path / "fresh")
    assert code == 0, err
    table = tomllib.loads(out)["tool"]["cathouse_harness"]
    assert (table["database"], table["role"]) == ("neondb", "neondb_owner")
    assert "database 'neondb', role 'neondb_owner': no PostgreSQL URL in the project names its own" in err
    assert "cathouse\"" not in out and "cathouse_owner" not in out

    (tmp_path / "fresh" / ".env.example").write_text(
        "# DATABASE_URL=postgresql://nobody:x@localhost/commented_out\n"
        "DATABASE_URL='postgresql+psycopg://shop_app:s3cret-pw@localhost:5432/shop?sslmode=disable'\n"
    )
    code, out, err = cli("init", "--yes", cwd=tmp_path / "fresh")
    assert code == 0, err
    settings = load_settings(tmp_path / "fresh", environ={}, use_dotenv=False)
    assert (settings.database, settings.role) == ("shop", "shop_app")
    assert "database 'shop', role 'shop_app': the URL in .env.example (line 2)" in err
    assert "s3cret-pw" not in out + err

    ini = tmp_path / "fresh" / "alembic.ini"  # the migrations' own URL comes first
    ini.write_text(ini.read_text().replace(
        "driver://user:pass@localhost/dbname", "postgresql://billing_owner@db.internal/billing"))
    code, out, err = cli("init", cwd=tmp_path / "fresh")
    assert code == 0, err
    assert "database 'billing', role 'billing_owner': the URL in alembic.ini (sqlalchemy.url)" in err
