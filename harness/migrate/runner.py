"""Running one service's Alembic commands on a shared connection, and explaining failures.

Transactions: every service's env.py is asked (config.attributes
["transaction_per_migration"] = True) to run each revision in its own transaction.
PostgreSQL DDL is transactional, so a failing revision rolls back entirely and the
version table keeps naming the last revision that fully applied; revisions before it in
the same run stay applied. An env.py that ignores the hint still runs the whole service
in one transaction (Alembic's default), which is just as atomic per service. Either way
no revision is ever half applied.

Connection sharing (Alembic cookbook): the connection goes to env.py through
config.attributes["connection"], already outside any transaction, so Alembic manages
the transactions itself.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from time import perf_counter

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from harness.errors import MigrationError, MigrationOrderError
from harness.fingerprint import script_directory
from harness.migrate.connection import describe_exception, sqlstate_of
from harness.settings import ServiceConfig, Settings

VERSION_TABLE = "alembic_version"
UNDEFINED_TABLE = "42P01"
INVALID_SCHEMA = "3F000"

_MISSING_RELATION = re.compile(r'relation "([^"]+)" does not exist')
_MISSING_SCHEMA = re.compile(r'schema "([^"]+)" does not exist')


@dataclass(frozen=True)
class ServiceResult:
    """What one service's migration did: revision before and after, and how long it took."""

    service: str
    schema: str
    before: str | None
    after: str | None
    seconds: float

    @property
    def changed(self) -> bool:
        return self.before != self.after


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def alembic_config(service: ServiceConfig, connection: Connection | None = None) -> Config:
    config = Config(str(service.alembic_ini))
    # env.py conventions the harness relies on (the example's env.py honours all three)
    config.attributes["configure_logger"] = False
    config.attributes["transaction_per_migration"] = True
    config.attributes["service"] = service.name
    config.attributes["schema"] = service.schema
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def end_transaction(connection: Connection) -> None:
    """Leave the connection outside any transaction (Alembic must own the next one)."""
    if connection.in_transaction():
        connection.rollback()


def ensure_schema(connection: Connection, schema: str) -> None:
    with connection.begin():
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))


def read_heads(connection: Connection, schema: str) -> tuple[str, ...]:
    """The revisions recorded in `<schema>.alembic_version` (empty when it does not exist)."""
    end_transaction(connection)
    try:
        qualified = f"{quote_ident(schema)}.{VERSION_TABLE}"
        exists = connection.execute(text("SELECT to_regclass(:t)"), {"t": qualified}).scalar()
        if exists is None:
            return ()
        rows = connection.execute(text(f"SELECT version_num FROM {qualified}")).scalars()
        return tuple(sorted(rows))
    finally:
        end_transaction(connection)


def join_heads(heads: tuple[str, ...]) -> str | None:
    return ",".join(heads) if heads else None


@contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo what an env.py's `fileConfig` would do to the process's logging (levels,
    root handlers, disabled loggers). Our env.py skips fileConfig when asked; others may not."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    disabled = {
        name: logger.disabled
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled = disabled.get(name, False)


def failing_revision(service: ServiceConfig, exc: BaseException, target: str,
                     current: tuple[str, ...], *, downgrade: bool = False) -> str | None:
    """The revision whose upgrade (or downgrade) raised `exc`.

    First choice: the revision file in the traceback. Fallback: the first step from the
    version table's revision towards the target.
    """
    try:
        script = script_directory(service)
        by_path = {
            os.path.realpath(s.path): s.revision for s in script.walk_revisions() if s.path
        }
    except Exception:
        return None
    found: str | None = None
    chain: BaseException | None = exc
    while chain is not None and found is None:
        for frame in traceback.extract_tb(chain.__traceback__):
            revision = by_path.get(os.path.realpath(frame.filename))
            if revision is not None:
                found = revision
        chain = chain.__cause__ or chain.__context__
    if found is not None:
        return found
    if sqlstate_of(exc) is None:
        return None  # env.py or the configuration failed, not a revision
    try:
        if downgrade:
            start = current[0] if current else None
            return start
        steps = list(script.iterate_revisions(target, current[0] if current else "base"))
        return steps[-1].revision if steps else None
    except Exception:
        return None


def _missing_object(exc: BaseException) -> str | None:
    """`schema.table` (or `schema`) named by an undefined-table / invalid-schema error."""
    message = describe_exception(exc)
    match = _MISSING_RELATION.search(message)
    if match:
        return match[1]
    match = _MISSING_SCHEMA.search(message)
    if not match:
        return None
    schema = match[1]
    # The statement usually names the table inside the missing schema (a REFERENCES).
    statement = str(getattr(exc, "statement", "") or "")
    table = re.search(rf'"?{re.escape(schema)}"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_$]*)"?', statement)
    return f"{schema}.{table[1]}" if table else schema


def dependency_message(settings: Settings, service: ServiceConfig, revision: str | None,
                       exc: BaseException) -> str | None:
    """For a missing object of another service, say which service creates it and how to
    fix the order; None when the error is something else."""
    if sqlstate_of(exc) not in (UNDEFINED_TABLE, INVALID_SCHEMA):
        return None
    missing = _missing_object(exc)
    if not missing:
        return None
    schema = missing.split(".", 1)[0] if "." in missing else missing
    if schema == service.schema:
        return None
    what = missing if "." in missing else f"schema {missing}"
    who = f"{service.name} revision {revision}" if revision else service.name
    owner = next((s for s in settings.services if s.schema == schema), None)
    if owner is None:
        if "." not in missing and sqlstate_of(exc) == UNDEFINED_TABLE:
            return None  # an unqualified name: we cannot tell whose it is
        return f"{who} needs {what}, which no configured service creates"
    names = [s.name for s in settings.services]
    if names.index(owner.name) > names.index(service.name):
        return (
            f"{who} needs {what}, which {owner.name} creates; "
            f"put {owner.name} before {service.name}"
        )
    return (
        f"{who} needs {what}, which {owner.name} should create (it migrates earlier); "
        f"check {owner.name}'s revisions"
    )


def migration_error(settings: Settings, service: ServiceConfig, exc: BaseException,
                    revision: str | None, action: str) -> MigrationError:
    db_error = describe_exception(exc)
    hint = dependency_message(settings, service, revision, exc)
    error_type = MigrationOrderError if hint and " before " in hint else MigrationError
    return error_type(hint or f"{action} failed", service=service.name,
                      revision=revision, db_error=db_error)


def _run_command(connection: Connection, settings: Settings, service: ServiceConfig,
                 target: str, *, downgrade: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One Alembic upgrade or downgrade of one service; (heads before, heads after).

    A failure becomes a MigrationError naming the revision that was being applied."""
    assert service.schema is not None
    end_transaction(connection)
    before = read_heads(connection, service.schema)
    run = command.downgrade if downgrade else command.upgrade
    try:
        with preserved_logging():
            run(alembic_config(service, connection), target)
    except Exception as exc:
        with suppress(Exception):
            end_transaction(connection)
        now: tuple[str, ...] = ()
        with suppress(Exception):
            now = read_heads(connection, service.schema)
        revision = failing_revision(service, exc, target, now, downgrade=downgrade)
        action = f"{'downgrade' if downgrade else 'upgrade'} to {target}"
        raise migration_error(settings, service, exc, revision, action) from exc
    end_transaction(connection)
    return before, read_heads(connection, service.schema)


def upgrade_service(connection: Connection, settings: Settings, service: ServiceConfig,
                    target: str = "head") -> ServiceResult:
    """Create the schema if missing and upgrade one service to `target`."""
    assert service.schema is not None
    started = perf_counter()
    end_transaction(connection)
    ensure_schema(connection, service.schema)
    before, after = _run_command(connection, settings, service, target, downgrade=False)
    if after == before and target in ("head", "heads"):
        _verify_at_head(service, after)
    return ServiceResult(
        service=service.name,
        schema=service.schema,
        before=join_heads(before),
        after=join_heads(after),
        seconds=perf_counter() - started,
    )


def _verify_at_head(service: ServiceConfig, current: tuple[str, ...]) -> None:
    """Nothing changed: make sure that is because we are at head, and not because env.py
    ran the migrations over a connection of its own (to whatever database its URL names)."""
    heads = tuple(sorted(script_directory(service).get_heads()))
    if current != heads:
        raise MigrationError(
            f"upgrade to head left it at {join_heads(current) or 'base'} but head is "
            f"{join_heads(heads) or 'base'}",
            service=service.name,
            hint="its env.py must run on config.attributes['connection'] when given one",
        )


def downgrade_service(connection: Connection, settings: Settings, service: ServiceConfig,
                      target: str = "base") -> ServiceResult:
    assert service.schema is not None
    started = perf_counter()
    before, after = _run_command(connection, settings, service, target, downgrade=True)
    return ServiceResult(service.name, service.schema, join_heads(before), join_heads(after),
                         perf_counter() - started)


def describe_result(result: ServiceResult, heads: tuple[str, ...] | None = None) -> str:
    """`auth-service: base -> 8b4e6d0a5c21 (0.12 s)` or `…: at head 8b4e…, nothing to do`."""
    if not result.changed:
        at_head = heads is not None and result.after is not None and \
            tuple(sorted(result.after.split(","))) == tuple(sorted(heads))
        where = "at head" if at_head else "at"
        return f"{result.service}: {where} {result.after or 'base'}, nothing to do"
    return (
        f"{result.service}: {result.before or 'base'} -> {result.after or 'base'} "
        f"({result.seconds:.2f} s)"
    )
