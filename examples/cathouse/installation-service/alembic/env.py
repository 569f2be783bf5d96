"""Alembic environment of installation-service: owns the `installation` schema, nothing else.

- The version table lives in `installation` (`alembic_version`), never in `public`.
- Autogenerate sees only `installation`; tables of other services that our models mention
  (targets of foreign keys) are left alone.
- A caller may hand us a ready connection in `config.attributes["connection"]` (the
  harness does, to run every service over one connection); otherwise we connect with
  asyncpg to MIGRATION_DATABASE_URL, or to `sqlalchemy.url` from alembic.ini.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from logging.config import fileConfig
from pathlib import Path
from types import ModuleType

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

SCHEMA = "installation"
SERVICE_DIR = Path(__file__).resolve().parents[1]

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _load_models() -> ModuleType:
    # Every service has a package called `app`, and several services migrate in one
    # process: load this service's models from their file, under a private name, afresh
    # each time (an edited model must be seen by the next autogenerate or check).
    name = "_alembic_models_installation"
    spec = importlib.util.spec_from_file_location(name, SERVICE_DIR / "app" / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # declarative resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


target_metadata = _load_models().Base.metadata


def database_url() -> str:
    url = os.environ.get("MIGRATION_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "MIGRATION_DATABASE_URL is not set (the direct, non-pooled database URL)"
        )
    from harness.engines import normalize_asyncpg_url

    return normalize_asyncpg_url(url)


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    return True


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    if type_ == "table":
        return obj.schema == SCHEMA
    return True


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        # One transaction per revision: a failing revision rolls back alone and the
        # version table always names the last revision that fully applied.
        transaction_per_migration=config.attributes.get("transaction_per_migration", True),
        **kwargs,
    )


def ensure_schema(connection: Connection) -> None:
    statement = text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    if connection.in_transaction():
        # the caller's transaction: it decides when this becomes visible
        connection.execute(statement)
    else:
        with connection.begin():
            connection.execute(statement)


def do_run_migrations(connection: Connection) -> None:
    ensure_schema(connection)
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
