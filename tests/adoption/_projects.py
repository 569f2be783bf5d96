"""Projects we did not write, built at test time.

Each builder makes a directory that looks like a real user's project: Alembic trees
from `alembic init -t <template>` (run as the `alembic` command, from the installed
Alembic) or env.py files written the way open-source FastAPI and microservice projects
write them, one revision per service, and a `[tool.cathouse_harness]` table. None of
them was written for the harness; the only thing the harness gets told is where each
alembic.ini is and which schema the service owns.

`Project.expected` lists the tables (`schema.table`) that must exist on the branch once
the services are migrated; `Project.foreign_url`, when set, is a database the project's
own configuration names and that must stay untouched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ALEMBIC = [sys.executable, "-m", "alembic"]


@dataclass
class Project:
    root: Path
    expected: list[str]
    foreign_url: str | None = None
    services: list[tuple[str, str, str]] = field(default_factory=list)  # name, schema, ini


def alembic_templates() -> list[str]:
    """Every template the installed Alembic lists (`alembic list_templates`)."""
    out = subprocess.run([*ALEMBIC, "list_templates"], capture_output=True, text=True, check=True).stdout
    names = []
    for line in out.splitlines():
        head, sep, _ = line.partition(" - ")
        if sep and head.strip() and " " not in head.strip():
            names.append(head.strip())
    return sorted(names)


def _init(directory: Path, template: str, location: str = "alembic") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([*ALEMBIC, "init", "-t", template, location], cwd=directory, check=True,
                   capture_output=True, text=True)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _revision(versions: Path, revision: str, upgrade: str, downgrade: str,
              down_revision: str | None = None, *, header: str = "") -> None:
    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    versions.mkdir(parents=True, exist_ok=True)
    (versions / f"{revision}_first.py").write_text(
        f'"""first revision"""\n{header}import sqlalchemy as sa\nfrom alembic import op\n\n'
        f"revision = {revision!r}\ndown_revision = {down_revision!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n{body(upgrade)}\n\n\ndef downgrade():\n{body(downgrade)}\n",
        encoding="utf-8",
    )


def _configure(root: Path, services: list[tuple[str, str, str]]) -> None:
    """Append the harness's table to the project's pyproject.toml (made if missing)."""
    lines = ["", "[tool.cathouse_harness]", 'parent_branch = "main"', ""]
    for name, schema, ini in services:
        lines += ["[[tool.cathouse_harness.services]]", f'name = "{name}"', f'schema = "{schema}"',
                  f'alembic_ini = "{ini}"', "pool_size = 2", "max_overflow = 1", ""]
    pyproject = root / "pyproject.toml"
    head = pyproject.read_text(encoding="utf-8") if pyproject.exists() else (
        '[project]\nname = "adopted"\nversion = "0"\n'
    )
    pyproject.write_text(head + "\n".join(lines), encoding="utf-8")


def _set_ini(ini: Path, key: str, value: str) -> None:
    lines = ini.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            break
    else:
        index = lines.index("[alembic]") + 1
        lines.insert(index, f"{key} = {value}")
    ini.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _create_table(table: str, schema: str) -> str:
    return f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True), schema="{schema}")'


THINGS_UP = 'op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))'
THINGS_DOWN = 'op.drop_table("things")'


def from_template(template: str) -> Callable[[Path, str], Project]:
    """One service at the project's root, straight from `alembic init -t template`."""

    def build(root: Path, foreign_url: str) -> Project:
        _init(root, template)
        versions = root / "alembic" / "versions"
        if template == "multidb":
            _revision(versions, "a1b2c3d4e5f6", "globals()[f'upgrade_{engine_name}']()",
                      "globals()[f'downgrade_{engine_name}']()")
            path = versions / "a1b2c3d4e5f6_first.py"
            text = path.read_text().replace("def upgrade():", "def upgrade(engine_name):")
            text = text.replace("def downgrade():", "def downgrade(engine_name):")
            text += (
                "\n\ndef upgrade_engine1():\n    " + THINGS_UP + "\n\n\ndef downgrade_engine1():\n    "
                + THINGS_DOWN + "\n\n\ndef upgrade_engine2():\n    "
                + THINGS_UP.replace("things", "others") + "\n\n\ndef downgrade_engine2():\n    "
                + THINGS_DOWN.replace("things", "others") + "\n"
            )
            path.write_text(text)
            expected = ["engine1.things", "engine2.others"]
        else:
            _revision(versions, "a1b2c3d4e5f6", THINGS_UP, THINGS_DOWN)
            expected = ["public.things"]
        services = [("app", "public", "alembic.ini")]
        _configure(root, services)
        return Project(root, expected, services=services)

    return build


# --- hand-written env.py files, as projects write them ------------------------------

_MODELS = """
    from sqlalchemy import ForeignKey, Integer
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class {cls}(Base):
        __tablename__ = "{table}"
        __table_args__ = {{"schema": "{schema}"}}
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        {extra}
"""

# A FastAPI-style sync env.py: models from the service's `app` package (found through
# prepend_sys_path = .), a version table in the service's schema, only its schema compared.
_SYNC_ENV = """
    from logging.config import fileConfig

    from alembic import context
    from sqlalchemy import engine_from_config, pool

    from app.models import Base

    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    target_metadata = Base.metadata
    SCHEMA = "{schema}"


    def include_name(name, type_, parent_names):
        return name == SCHEMA if type_ == "schema" else True


    def run_migrations_online() -> None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {{}}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        with connectable.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                version_table_schema=SCHEMA,
                include_schemas=True,
                include_name=include_name,
            )
            with context.begin_transaction():
                context.run_migrations()


    run_migrations_online()
"""


def _service(root: Path, directory: str, schema: str, env_py: str, *, models: str,
             upgrade: str, downgrade: str, ini_url: str | None = None,
             relative_location: bool = False) -> Path:
    """A service directory made by `alembic init -t generic`, then edited as projects do."""
    service = root / directory
    _init(service, "generic")
    ini = service / "alembic.ini"
    if relative_location:
        _set_ini(ini, "script_location", "alembic")  # as older `alembic init` wrote it
    if ini_url is not None:
        _set_ini(ini, "sqlalchemy.url", ini_url.replace("%", "%%"))
    _write(service / "app" / "__init__.py", "")
    _write(service / "app" / "models.py", models)
    _write(service / "alembic" / "env.py", env_py)
    _revision(service / "alembic" / "versions", f"{schema[:4]:0<4}00000001", upgrade, downgrade)
    return ini


def two_services_cross_schema_fk(root: Path, foreign_url: str) -> Project:
    """auth and catalog, each with its own package called `app`, a relative
    script_location, and catalog.cats -> auth.users."""
    _service(root, "auth-service", "auth", _SYNC_ENV.format(schema="auth"),
             models=_MODELS.format(cls="User", table="users", schema="auth", extra=""),
             upgrade='op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), schema="auth")',
             downgrade='op.drop_table("users", schema="auth")', relative_location=True)
    _service(root, "catalog-service", "catalog", _SYNC_ENV.format(schema="catalog"),
             models=_MODELS.format(
                 cls="Cat", table="cats", schema="catalog",
                 extra='owner_id: Mapped[int] = mapped_column(ForeignKey("auth.users.id"))'),
             upgrade="""
                 op.create_table(
                     "cats",
                     sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("owner_id", sa.Integer, sa.ForeignKey("auth.users.id")),
                     schema="catalog",
                 )
             """,
             downgrade='op.drop_table("cats", schema="catalog")', relative_location=True)
    services = [("auth-service", "auth", "auth-service/alembic.ini"),
                ("catalog-service", "catalog", "catalog-service/alembic.ini")]
    _configure(root, services)
    return Project(root, ["auth.users", "catalog.cats"], services=services)


# The cookbook's shared-connection env.py, plus what real ones add before the
# transaction: a CREATE SCHEMA and a search_path on the connection they were handed.
_SQL_BEFORE_TRANSACTION_ENV = """
    from alembic import context
    from sqlalchemy import engine_from_config, pool, text

    config = context.config
    SCHEMA = "shop"


    def run_on(connection):
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.execute(text(f"SET search_path TO {SCHEMA}, public"))
        context.configure(connection=connection, version_table_schema=SCHEMA)
        with context.begin_transaction():
            context.run_migrations()


    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                    prefix="sqlalchemy.", poolclass=pool.NullPool)
        with engine.connect() as connection:
            run_on(connection)
            connection.commit()
    else:
        run_on(connectable)
"""


def sql_before_begin_transaction(root: Path, foreign_url: str) -> Project:
    _service(root, "shop-service", "shop", _SQL_BEFORE_TRANSACTION_ENV, models="",
             upgrade='op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))',
             downgrade='op.drop_table("orders")')
    services = [("shop-service", "shop", "shop-service/alembic.ini")]
    _configure(root, services)
    return Project(root, ["shop.orders"], services=services)


# A FastAPI project's async env.py: the URL comes from a settings object built from
# DATABASE_URL (and a .env that names the developer's own database).
_SETTINGS_ASYNC_ENV = """
    import asyncio

    from alembic import context
    from sqlalchemy import pool
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.config import settings
    from app.models import Base

    config = context.config
    target_metadata = Base.metadata


    def do_run_migrations(connection):
        context.configure(connection=connection, target_metadata=target_metadata,
                          version_table_schema="users")
        with context.begin_transaction():
            context.run_migrations()


    async def run_async_migrations():
        engine = create_async_engine(settings.database_url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
        await engine.dispose()


    asyncio.run(run_async_migrations())
"""

_SETTINGS = """
    import os

    from dotenv import load_dotenv

    load_dotenv()  # a developer's .env; the environment wins, as python-dotenv's default


    class Settings:
        def __init__(self) -> None:
            url = os.environ["DATABASE_URL"]
            # the app's URL is asyncpg's; some shells hold the libpq form
            self.database_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)


    settings = Settings()
"""


def settings_object_async(root: Path, foreign_url: str) -> Project:
    ini = _service(root, "users-service", "users", _SETTINGS_ASYNC_ENV,
                   models=_MODELS.format(cls="Profile", table="profiles", schema="users", extra=""),
                   upgrade=_create_table("profiles", "users"),
                   downgrade='op.drop_table("profiles", schema="users")')
    _write(ini.parent / "app" / "config.py", _SETTINGS)
    _write(ini.parent / ".env", f"DATABASE_URL={foreign_url}\n")
    services = [("users-service", "users", "users-service/alembic.ini")]
    _configure(root, services)
    return Project(root, ["users.profiles"], foreign_url=foreign_url, services=services)


def ini_names_a_real_database(driver: str) -> Callable[[Path, str], Project]:
    """The generic template's env.py, with alembic.ini's sqlalchemy.url set to a real
    database (in `driver`'s form): that database must stay untouched."""

    def build(root: Path, foreign_url: str) -> Project:
        _init(root, "generic")
        ini_url = foreign_url.replace("postgresql://", f"{driver}://", 1)
        _set_ini(root / "alembic.ini", "sqlalchemy.url", ini_url.replace("%", "%%"))
        _revision(root / "alembic" / "versions", "a1b2c3d4e5f6", THINGS_UP, THINGS_DOWN)
        services = [("app", "public", "alembic.ini")]
        _configure(root, services)
        return Project(root, ["public.things"], foreign_url=foreign_url, services=services)

    return build


_OWN_VERSION_SCHEMA_ENV = """
    from alembic import context
    from sqlalchemy import engine_from_config, pool, text

    config = context.config

    with engine_from_config(config.get_section(config.config_ini_section, {}),
                            prefix="sqlalchemy.", poolclass=pool.NullPool).connect() as connection:
        connection.execute(text("CREATE SCHEMA IF NOT EXISTS meta"))
        connection.commit()
        context.configure(connection=connection, version_table_schema="meta",
                          version_table="billing_version")
        with context.begin_transaction():
            context.run_migrations()
"""


def version_table_in_its_own_schema(root: Path, foreign_url: str) -> Project:
    _service(root, "billing-service", "billing", _OWN_VERSION_SCHEMA_ENV, models="",
             upgrade=_create_table("invoices", "billing"),
             downgrade='op.drop_table("invoices", schema="billing")')
    services = [("billing-service", "billing", "billing-service/alembic.ini")]
    _configure(root, services)
    return Project(root, ["billing.invoices", "meta.billing_version"], services=services)


SHAPES: dict[str, Callable[[Path, str], Project]] = {
    **{f"template-{name}": from_template(name) for name in alembic_templates()},
    "two-services-cross-schema-fk": two_services_cross_schema_fk,
    "sql-before-begin-transaction": sql_before_begin_transaction,
    "settings-object-async": settings_object_async,
    "ini-url-psycopg3": ini_names_a_real_database("postgresql+psycopg"),
    "ini-url-psycopg2": ini_names_a_real_database("postgresql+psycopg2"),
    "version-table-own-schema": version_table_in_its_own_schema,
}

# An env.py whose URL we cannot know: it builds it from a variable of its own. The
# harness must refuse the connection, migrate nothing anywhere, and say what to change.
_OWN_VARIABLE_ENV = """
    import os

    from alembic import context
    from sqlalchemy import create_engine, pool

    url = os.environ.get("BILLING_DB_URL", "{url}")
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""


def own_variable(root: Path, foreign_url: str) -> Project:
    sync_url = foreign_url.replace("postgresql://", "postgresql+psycopg://", 1)
    _service(root, "billing-service", "billing", _OWN_VARIABLE_ENV.format(url=sync_url), models="",
             upgrade=THINGS_UP, downgrade=THINGS_DOWN)
    services = [("billing-service", "billing", "billing-service/alembic.ini")]
    _configure(root, services)
    return Project(root, [], foreign_url=foreign_url, services=services)
