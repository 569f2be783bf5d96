"""The Alembic environment of a Cat House service: one schema, its own and nothing else.

A service's `alembic/env.py` runs this file by path (see `__init__.py` for why) and
calls `run_migrations(schema=..., models=...)`. Then:

- The version table lives in the service's schema (`<schema>.alembic_version`), never
  in `public`; the schema is created when missing.
- Autogenerate sees only that schema; tables of other services that the models mention
  (targets of foreign keys) are left alone.
- A caller may hand over a ready connection in `config.attributes["connection"]` (the
  harness does, to run every service over one connection); otherwise we connect with
  asyncpg to MIGRATION_DATABASE_URL, or to `sqlalchemy.url` from alembic.ini.
- `config.attributes["transaction_per_migration"]` (default True) picks one transaction
  per revision; `config.attributes["configure_logger"]` False skips alembic.ini's logging.

Keep this file free of imports from `cathouse_common`: it is run by path, not imported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable
from logging.config import fileConfig
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import context
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def run_migrations(*, schema: str, models: Path) -> None:
    """Run the current Alembic command for the service owning `schema`, whose declarative
    `Base` is in the file `models`."""
    config = context.config
    if config.config_file_name is not None and config.attributes.get("configure_logger", True):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    configure = _configurer(schema, load_models(models, schema).Base.metadata)
    if context.is_offline_mode():
        configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_async(schema, configure))
    else:
        _run_on(connection, schema, configure)


def load_models(path: Path, schema: str) -> ModuleType:
    # Every service has a package called `app`, and several services migrate in one
    # process: load this service's models from their file, under a private name, afresh
    # each time (an edited model must be seen by the next autogenerate or check).
    name = f"_alembic_models_{schema}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # declarative resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _given_url() -> str:
    url = os.environ.get("MIGRATION_DATABASE_URL") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError(
            "MIGRATION_DATABASE_URL is not set (the direct, non-pooled database URL)"
        )
    return url


def database_url() -> str:
    from cathouse_harness.db.urls import normalize_asyncpg_url

    return normalize_asyncpg_url(_given_url())


def _configurer(schema: str, metadata: MetaData) -> Callable[..., None]:
    def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
        if type_ == "schema":
            return name == schema
        return True

    def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
        if type_ == "table":
            return obj.schema == schema
        return True

    def configure(**kwargs: Any) -> None:
        context.configure(
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            include_object=include_object,
            compare_type=True,
            # One transaction per revision: a failing revision rolls back alone and the
            # version table always names the last revision that fully applied.
            transaction_per_migration=context.config.attributes.get(
                "transaction_per_migration", True
            ),
            **kwargs,
        )

    return configure


def _ensure_schema(connection: Connection, schema: str) -> None:
    statement = text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    if connection.in_transaction():
        # the caller's transaction: it decides when this becomes visible
        connection.execute(statement)
    else:
        with connection.begin():
            connection.execute(statement)


def _run_on(connection: Connection, schema: str, configure: Callable[..., None]) -> None:
    _ensure_schema(connection, schema)
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(schema: str, configure: Callable[..., None]) -> None:
    from cathouse_harness.db.engines import tls_connect_args

    # the URL's sslrootcert as an SSLContext: SQLAlchemy cannot hand it to asyncpg
    engine = create_async_engine(
        database_url(), poolclass=pool.NullPool, connect_args=tls_connect_args(_given_url())
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on, schema, configure)
    finally:
        await engine.dispose()
