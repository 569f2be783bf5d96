"""migrate_all on the Cat House example, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import MigrationError
from cathouse_harness.migrate.all_services import current_revisions, head_revisions, migrate_all
from cathouse_harness.migrate.connection import run_with_connection
from cathouse_harness.migrate.runner import alembic_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cathouse"
HEADS = {
    "auth-service": "8b4e6d0a5c21",
    "catalog-service": "9e7f3b6c1d42",
    "installation-service": "7d1b5f8a3e64",
}


def fetch(url: str, sql: str) -> list[tuple]:
    async def run() -> list[tuple]:
        connection = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await connection.fetch(sql)]
        finally:
            await connection.close()

    return asyncio.run(run())


def run_admin(dsn: str, *statements: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def tables(url: str) -> set[str]:
    rows = fetch(
        url,
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    return {r[0] for r in rows}


def test_example_settings_load_and_validate():
    settings = load_settings(EXAMPLE, environ={})
    assert [s.name for s in settings.services] == [
        "auth-service",
        "catalog-service",
        "installation-service",
        "proxy-service",
    ]
    assert [s.schema for s in settings.services] == ["auth", "catalog", "installation", None]
    assert [(s.pool_size, s.max_overflow) for s in settings.services] == [
        (2, 1), (2, 1), (2, 1), (1, 0)
    ]
    proxy = settings.service("proxy-service")
    assert proxy.read_only and not proxy.migrates
    assert [s.name for s in settings.migrating_services] == list(HEADS)
    assert settings.database == "cathouse" and settings.role == "cathouse_owner"
    assert settings.branch_ttl.total_seconds() == 15 * 60
    assert settings.connection_limit == 10 and settings.pool_budget == 10
    for service in settings.migrating_services:
        assert service.alembic_ini == (EXAMPLE / service.name / "alembic.ini").resolve()


def test_head_revisions_of_the_example():
    settings = load_settings(EXAMPLE, environ={})
    assert head_revisions(settings) == {name: (rev,) for name, rev in HEADS.items()}


def test_migrates_the_example_from_empty(fresh_database_url):
    settings = load_settings(EXAMPLE, environ={})
    lines: list[str] = []
    results = migrate_all(settings, fresh_database_url, reporter=lines.append)

    assert [(r.service, r.schema, r.before, r.after) for r in results] == [
        ("auth-service", "auth", None, HEADS["auth-service"]),
        ("catalog-service", "catalog", None, HEADS["catalog-service"]),
        ("installation-service", "installation", None, HEADS["installation-service"]),
    ]
    assert all(r.changed and r.seconds > 0 for r in results)
    assert lines[0].startswith(f"auth-service: base -> {HEADS['auth-service']} (")
    assert tables(fresh_database_url) == {
        "auth.alembic_version",
        "auth.users",
        "catalog.alembic_version",
        "catalog.cats",
        "catalog.permissions",
        "installation.alembic_version",
        "installation.installations",
        "installation.installation_permissions",
    }
    assert current_revisions(settings, fresh_database_url) == HEADS
    # cross-schema foreign keys exist and point where the seed says
    fks = fetch(
        fresh_database_url,
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
        "WHERE contype = 'f' ORDER BY 1, 2",
    )
    assert fks == [
        ("catalog.cats", "auth.users"),
        ("catalog.permissions", "catalog.cats"),
        ("installation.installation_permissions", "catalog.permissions"),
        ("installation.installation_permissions", "installation.installations"),
        ("installation.installations", "auth.users"),
        ("installation.installations", "catalog.cats"),
    ]


def test_second_run_is_a_no_op(fresh_database_url):
    settings = load_settings(EXAMPLE, environ={})
    migrate_all(settings, fresh_database_url)
    lines: list[str] = []
    results = migrate_all(settings, fresh_database_url, reporter=lines.append)
    assert [r.changed for r in results] == [False, False, False]
    assert [r.after for r in results] == list(HEADS.values())
    assert lines == [f"{name}: at head {rev}, nothing to do" for name, rev in HEADS.items()]


def test_models_match_migrations(fresh_database_url):
    """Autogenerate (limited to each service's schema) finds nothing to add."""
    settings = load_settings(EXAMPLE, environ={})
    migrate_all(settings, fresh_database_url)

    def check(connection):
        for service in settings.migrating_services:
            command.check(alembic_config(service, connection))

    run_with_connection(fresh_database_url, check)


def test_autogenerate_check_sees_a_model_without_migration(fresh_database_url, example_copy):
    models = example_copy / "auth-service" / "app" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    is_active: Mapped[bool]",
            "    nickname: Mapped[str | None] = mapped_column(String(50))\n"
            "    is_active: Mapped[bool]",
        )
    )
    settings = load_settings(example_copy, environ={})
    migrate_all(settings, fresh_database_url)

    def check(connection):
        command.check(alembic_config(settings.service("auth-service"), connection))

    with pytest.raises(Exception, match="nickname"):
        run_with_connection(fresh_database_url, check)


def test_failing_revision_stops_the_run_and_rolls_back(
    fresh_database_url, example_copy, add_revision: Callable[..., Path]
):
    add_revision(
        example_copy, "catalog-service", "c0ffee000001", HEADS["catalog-service"],
        'op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), schema="catalog")',
        'op.drop_table("tags", schema="catalog")',
    )
    add_revision(
        example_copy, "catalog-service", "c0ffee000002", "c0ffee000001",
        """
        op.create_table("toys", sa.Column("id", sa.Integer, primary_key=True), schema="catalog")
        op.execute("SELECT 1 / 0")
        """,
    )
    settings = load_settings(example_copy, environ={})
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, fresh_database_url)
    error = caught.value
    assert error.service == "catalog-service"
    assert error.revision == "c0ffee000002"
    assert error.db_error is not None and "division by zero" in error.db_error
    assert "DivisionByZero" in error.db_error and "\n" not in str(error)
    assert "catalog-service" in str(error) and "c0ffee000002" in str(error)

    # auth at head; catalog at the last revision that fully applied; installation untouched
    assert current_revisions(settings, fresh_database_url) == {
        "auth-service": HEADS["auth-service"],
        "catalog-service": "c0ffee000001",
        "installation-service": None,
    }
    found = tables(fresh_database_url)
    assert "catalog.tags" in found and "catalog.toys" not in found
    assert not any(t.startswith("installation.") for t in found)
    assert fetch(
        fresh_database_url, "SELECT 1 FROM pg_namespace WHERE nspname = 'installation'"
    ) == []


def test_error_in_python_code_of_a_revision_is_named(
    fresh_database_url, example_copy, add_revision
):
    add_revision(example_copy, "auth-service", "badc0de00001", HEADS["auth-service"],
                 "raise RuntimeError('no such thing')")
    settings = load_settings(example_copy, environ={})
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, fresh_database_url)
    assert caught.value.service == "auth-service"
    assert caught.value.revision == "badc0de00001"
    assert caught.value.db_error == "RuntimeError: no such thing"
    assert current_revisions(settings, fresh_database_url)["catalog-service"] is None


def test_wrong_order_names_the_missing_dependency(fresh_database_url, example_copy):
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text()
    catalog = text.index('[[tool.cathouse_harness.services]]\nname = "catalog-service"')
    installation = text.index('[[tool.cathouse_harness.services]]\nname = "installation-service"')
    proxy = text.index("# Reads every schema")
    swapped = text[:catalog] + text[installation:proxy] + text[catalog:installation] + text[proxy:]
    pyproject.write_text(swapped)
    settings = load_settings(example_copy, environ={})
    assert [s.name for s in settings.migrating_services] == [
        "auth-service", "installation-service", "catalog-service"
    ]
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, fresh_database_url)
    error = caught.value
    assert error.service == "installation-service"
    assert error.revision == "2a6c9e4b8f53"
    message = str(error)
    assert (
        "installation-service revision 2a6c9e4b8f53 needs catalog.cats, which catalog-service "
        "creates; put catalog-service before installation-service" in message
    )
    assert current_revisions(settings, fresh_database_url) == {
        "auth-service": HEADS["auth-service"],
        "installation-service": None,
        "catalog-service": None,
    }


def test_missing_table_of_an_unknown_schema(fresh_database_url, example_copy, add_revision):
    add_revision(
        example_copy, "auth-service", "ab0000000001", HEADS["auth-service"],
        'op.execute("CREATE TABLE auth.refs (id int REFERENCES billing.accounts (id))")',
    )
    settings = load_settings(example_copy, environ={})
    with pytest.raises(MigrationError, match="needs billing.accounts, which no configured "
                       "service creates"):
        migrate_all(settings, fresh_database_url)


def test_works_from_inside_a_running_event_loop(fresh_database_url):
    settings = load_settings(EXAMPLE, environ={})

    async def inside_loop():
        loop = asyncio.get_running_loop()
        results = migrate_all(settings, fresh_database_url)
        assert asyncio.get_running_loop() is loop and not loop.is_closed()
        return results

    results = asyncio.run(inside_loop())
    assert [r.after for r in results] == list(HEADS.values())


def test_encoded_password_url_works_and_never_shows(fresh_database_url, pg_admin_dsn,
                                                    example_copy, add_revision):
    """A role whose password needs URL-encoding logs in, and its password never shows."""
    password = "p@ss:w/rd% +x?#&="
    role = f"nasty_{uuid.uuid4().hex[:8]}"
    database = urlsplit(fresh_database_url).path.lstrip("/")
    run_admin(pg_admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
              f'GRANT ALL ON DATABASE "{database}" TO {role}')
    try:
        parts = urlsplit(fresh_database_url)
        url = (f"postgres://{role}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
               f"/{database}?sslmode=disable&channel_binding=prefer")
        add_revision(example_copy, "auth-service", "ab0000000002", HEADS["auth-service"],
                     'op.execute("SELECT * FROM nowhere")')
        settings = load_settings(example_copy, environ={})
        with pytest.raises(MigrationError) as caught:
            migrate_all(settings, url)
        assert caught.value.revision == "ab0000000002"
        assert caught.value.db_error == (
            'UndefinedTable [42P01]: relation "nowhere" does not exist'
        )
        text = str(caught.value)
        assert password not in text and quote(password, safe="") not in text
        assert current_revisions(settings, url)["auth-service"] == HEADS["auth-service"]
        # a wrong password is refused: the password really was checked above
        wrong = url.replace(quote(password, safe=""), "wrong")
        with pytest.raises(MigrationError, match="cannot connect"):
            current_revisions(settings, wrong)
    finally:
        admin = urlsplit(pg_admin_dsn)
        in_database = urlunsplit(admin._replace(path=f"/{database}"))
        run_admin(in_database, f"DROP OWNED BY {role}")
        run_admin(pg_admin_dsn, f"DROP ROLE {role}")


def test_unreachable_database_is_one_line_without_password():
    settings = load_settings(EXAMPLE, environ={})
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, "postgresql://someone:S3cretPassw0rd@127.0.0.1:9/cathouse")
    text = str(caught.value)
    assert "S3cretPassw0rd" not in text and "\n" not in text
    assert "cannot connect to postgresql://someone:***@127.0.0.1:9/cathouse" in text


def test_env_py_that_ignores_the_shared_connection_is_caught(fresh_database_url, example_copy):
    # The example's env.py files delegate to cathouse_common/alembic_env.py; catalog's is
    # replaced by one that is handed the connection and does nothing with it.
    env_py = example_copy / "catalog-service" / "alembic" / "env.py"
    assert "run_migrations" in env_py.read_text()
    env_py.write_text(
        "from alembic import context\n\n"
        "assert context.config.attributes.get('connection') is not None\n"
        "# ignores it: never configures Alembic on it, never runs a revision\n"
    )
    settings = load_settings(example_copy, environ={})
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, fresh_database_url)
    assert caught.value.service == "catalog-service"
    assert "never called context.run_migrations()" in str(caught.value)
    assert "config.attributes['connection']" in str(caught.value)


def test_broken_env_names_no_revision(fresh_database_url, example_copy):
    models = example_copy / "installation-service" / "app" / "models.py"
    models.write_text(models.read_text() + "\ndef broken(:\n")
    settings = load_settings(example_copy, environ={})
    with pytest.raises(MigrationError) as caught:
        migrate_all(settings, fresh_database_url)
    assert caught.value.service == "installation-service"
    assert caught.value.revision is None
    assert caught.value.db_error is not None
    assert caught.value.db_error.startswith("SyntaxError: ")
    assert current_revisions(settings, fresh_database_url)["catalog-service"] == (
        HEADS["catalog-service"]
    )


def test_a_run_reads_each_service_s_setup_once_and_the_next_run_reads_it_again(
    fresh_database_url, example_copy, add_revision: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
):
    """service_sources, driver_scheme and the revisions are read once per service within
    one migrate_all (they were read three to five times); nothing is kept across runs,
    so a revision added between two runs in one process is applied by the second."""
    import cathouse_harness.branching.fingerprint as fingerprint

    reads: list[Path] = []
    read_section = fingerprint._read_alembic_section

    def counting(ini: Path | None):  # type: ignore[no-untyped-def]
        reads.append(ini)  # type: ignore[arg-type]
        return read_section(ini)

    monkeypatch.setattr(fingerprint, "_read_alembic_section", counting)
    settings = load_settings(example_copy, environ={})
    migrate_all(settings, fresh_database_url, reporter=lambda line: None)
    assert sorted(map(str, reads)) == sorted(str(s.alembic_ini) for s in settings.migrating_services)

    add_revision(example_copy, "auth-service", "aa11bb22cc33", HEADS["auth-service"],
                 "op.create_table('memo_probe', sa.Column('id', sa.Integer, primary_key=True), "
                 "schema='auth')")
    results = migrate_all(settings, fresh_database_url)
    assert [r.after for r in results if r.service == "auth-service"] == ["aa11bb22cc33"]
    assert "auth.memo_probe" in tables(fresh_database_url)
