"""Running one service's Alembic commands on a branch, and explaining failures.

Transactions: every service's env.py is asked (config.attributes
["transaction_per_migration"] = True) to run each revision in its own transaction.
PostgreSQL DDL is transactional, so a failing revision rolls back entirely and the
version table keeps naming the last revision that fully applied; revisions before it in
the same run stay applied. An env.py that ignores the hint still runs the whole service
in one transaction (Alembic's default), which is just as atomic per service. Either way
no revision is ever half applied.

Connection sharing (Alembic cookbook): the connection goes to env.py through
config.attributes["connection"], outside any transaction. An env.py that runs SQL
before `context.begin_transaction()` makes the transaction its caller's (SQLAlchemy
autobegins, and Alembic then leaves it alone): as the cookbook has the caller do, we
commit it once the command succeeded and roll it back when it failed. What the env.py
sees otherwise (URLs, directory, guard) is `cathouse_harness.migrate.environment`'s job.
"""

from __future__ import annotations

import io
import os
import re
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from time import perf_counter

from alembic import command
from alembic.config import Config
from cathouse_harness.branching.fingerprint import service_sources
from cathouse_harness.config.settings import ServiceConfig, Settings
from cathouse_harness.db.quoting import quote_ident
from cathouse_harness.errors import (
    ConfigError,
    HarnessError,
    MigrationError,
    MigrationOrderError,
    SafetyError,
)
from cathouse_harness.local.sim.neon_features import hint_for as neon_hint
from cathouse_harness.migrate.connection import describe_exception, sqlstate_of
from cathouse_harness.migrate.environment import (
    DIRECT_URL_KEY,
    VersionRecord,
    alembic_config,
    multidb_names,
    script_directory,
    service_command,
    version_locations,
)
from cathouse_harness.migrate.guard import DOCS_SECTION, refused_in
from cathouse_harness.migrate.heads import (
    HEAD_TARGETS,
    service_target,
    several_heads_error,
    standing,
)
from sqlalchemy import text
from sqlalchemy.engine import Connection

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
    target: tuple[str, ...] = ("head",)
    # how the database stands against the target when not at it (`ahead: …`), else None
    standing: str | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def end_transaction(connection: Connection) -> None:
    """Leave the connection outside any transaction (Alembic must own the next one)."""
    if connection.in_transaction():
        connection.rollback()


def ensure_schema(connection: Connection, schema: str) -> None:
    with connection.begin():
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))


def _heads_of(records: list[VersionRecord], which: str) -> tuple[str, ...]:
    return tuple(sorted({head for record in records for head in getattr(record, which)}))


def current_heads(connection: Connection, service: ServiceConfig) -> tuple[str, ...]:
    """The service's revisions in the database, read where its env.py keeps its version
    table (Alembic's `current`, which runs env.py without migrating). An env.py that
    cannot run leaves us `<schema>.alembic_version`, where most keep it."""
    try:
        records = run_alembic(connection, service, _quiet_current, read_only=True)
    except Exception:
        return _read_version_table(connection, service.schema or "public")
    return _heads_of(records, "after")


def _quiet_current(config: Config) -> None:
    # `current` prints the heads it found; ours come from the records, and the command
    # line's stdout is for its own results
    config.stdout = io.StringIO()
    command.current(config)


def _read_version_table(connection: Connection, schema: str) -> tuple[str, ...]:
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
                      revision=revision, db_error=db_error, hint=neon_hint(db_error))


def run_alembic(connection: Connection, service: ServiceConfig,
                action: Callable[[Config], object], *, read_only: bool = False) -> list[VersionRecord]:
    """Run one Alembic command (`action(config)`) of `service` on the shared connection's
    branch; return what each `context.run_migrations()` found and left.

    A transaction the env.py left open on the shared connection is committed after
    success and rolled back after a failure. `read_only` runs the env.py inside a
    transaction of ours that is rolled back (what it creates on the shared connection
    on its way, a schema say, does not stay). A refused connection comes out as the
    guard's own error."""
    end_transaction(connection)
    if read_only:
        connection.begin()
    config = alembic_config(service, connection)
    try:
        with service_command(service, connection.info[DIRECT_URL_KEY]) as records:
            action(config)
    except BaseException as exc:
        with suppress(Exception):
            end_transaction(connection)
        refusal = refused_in(exc)
        if refusal is not None:
            raise refusal from None
        raise
    if read_only:
        end_transaction(connection)
    elif connection.in_transaction():
        connection.commit()
    return records


def _env_py_error(service: ServiceConfig, exc: BaseException) -> MigrationError | None:
    """For an env.py that failed by itself (no database error, no revision file in the
    traceback): one line naming the file and line, and the smallest edit."""
    if sqlstate_of(exc) is not None or isinstance(exc, HarnessError):
        return None
    env_py = os.path.realpath(service_sources(service).env_py)
    line = None
    chain: BaseException | None = exc
    while chain is not None:
        for frame in traceback.extract_tb(chain.__traceback__):
            if os.path.realpath(frame.filename) == env_py:
                line = frame.lineno
        chain = chain.__cause__ or chain.__context__
    if line is None:
        return None
    first = (str(exc).strip().splitlines() or [""])[0]
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return MigrationError(
        f"{env_py}, line {line}, failed before migrating",
        service=service.name,
        db_error=detail,
        hint="if it was looking for its database: the harness hands env.py the branch as "
        "sqlalchemy.url, MIGRATION_DATABASE_URL, DATABASE_URL, PG* and "
        "config.attributes['connection'], and the smallest edit is to use that connection "
        f"when it is set ({DOCS_SECTION})",
    )


def _revision_error(settings: Settings, service: ServiceConfig, exc: BaseException,
                    target: str, current: tuple[str, ...]) -> HarnessError | None:
    """Alembic refusing the revisions themselves (several heads for `head`, a revision
    nobody has): one line that says so, instead of a guess about env.py."""
    from alembic.script.revision import MultipleHeads, ResolutionError

    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, MultipleHeads) or "Multiple head revisions are present" in str(chain):
            heads: Sequence[str] = ()
            with suppress(Exception):
                heads = script_directory(service).get_heads()
            return several_heads_error(service, heads, settings.source_of("services"))
        if isinstance(chain, ResolutionError) or "Can't locate revision" in str(chain):
            return _unknown_revision_error(service, target, current)
        chain = chain.__cause__ or chain.__context__
    return None


def _unknown_revision_error(service: ServiceConfig, target: str,
                            database: tuple[str, ...]) -> MigrationError:
    try:
        script = script_directory(service)
        known = {r.revision for r in script.walk_revisions()}
    except Exception:
        known = set()
    unknown = [r for r in database if r not in known]
    if unknown:
        return MigrationError(
            f"the database is at {', '.join(unknown)}, which none of its revision files has: "
            "it is ahead of these scripts (migrated by other code)",
            service=service.name,
            hint="check out the code that has that revision, or start the branch again "
            "(cathouse-branch reset)",
        )
    return MigrationError(f"target {target!r} names no revision of its scripts",
                          service=service.name,
                          hint="fix the target: head, heads, a branch label (label@head) or a revision")


def _run_command(connection: Connection, settings: Settings, service: ServiceConfig,
                 target: str, *, downgrade: bool) -> list[VersionRecord]:
    """One Alembic upgrade or downgrade of one service; each run's version records.

    A failure becomes a MigrationError naming the revision that was being applied."""
    run = command.downgrade if downgrade else command.upgrade
    records: list[VersionRecord] = []

    try:
        records = run_alembic(connection, service, lambda config: run(config, target))
    except (MigrationError, SafetyError):
        raise
    except Exception as exc:
        now: tuple[str, ...] = ()
        with suppress(Exception):
            now = current_heads(connection, service)
        revision = failing_revision(service, exc, target, now, downgrade=downgrade)
        if revision is None:
            refused = _revision_error(settings, service, exc, target, now)
            if refused is not None:
                raise refused from None
        env_error = _env_py_error(service, exc) if revision is None else None
        if env_error is not None:
            raise env_error from None
        action_name = f"{'downgrade' if downgrade else 'upgrade'} to {target}"
        raise migration_error(settings, service, exc, revision, action_name) from exc
    return records


def upgrade_targets(settings: Settings, service: ServiceConfig,
                    target: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """What `alembic upgrade` is given, in order: `target` when the caller names one,
    else the service's own (see `cathouse_harness.migrate.heads`)."""
    if isinstance(target, str):
        return (target,)
    if target is not None:
        return tuple(target)
    if service.target is not None:
        return service.target
    try:
        script = script_directory(service)
    except Exception:
        return ("head",)  # unreadable revisions: Alembic's own command says what is wrong
    return service_target(settings, service, script)


def _check_script_dir(settings: Settings, service: ServiceConfig) -> None:
    """A script_location that does not exist from where the service's Alembic runs, but
    does from a directory above it (an ini written for `alembic -c svc/alembic.ini` run
    from the repository root): one line naming the `directory` to set."""
    sources = service_sources(service)
    if sources.script_dir.is_dir() or sources.ini is None or service.directory is not None:
        return
    try:
        written = sources.script_dir.relative_to(sources.directory)
    except ValueError:
        return  # an absolute script_location: nothing another directory would change
    root = settings.project_root.resolve()
    for above in sources.directory.parents:
        if not above.is_relative_to(root):
            break
        if (above / written).is_dir():
            directory = above.relative_to(root).as_posix()
            raise ConfigError(
                f"script_location {written.as_posix()} does not exist from {sources.directory} "
                f"but does from {above}",
                key=f"services[{service.name}].directory",
                source=settings.source_of("services"),
                hint=f'set directory = "{directory}" in its [[tool.cathouse_harness.services]] entry',
            )


def upgrade_service(connection: Connection, settings: Settings, service: ServiceConfig,
                    target: str | Sequence[str] | None = None) -> ServiceResult:
    """Create the schema if missing and upgrade one service to `target` (each of them,
    in order; None: the service's configured target)."""
    assert service.schema is not None
    started = perf_counter()
    _check_script_dir(settings, service)
    targets = upgrade_targets(settings, service, target)
    end_transaction(connection)
    ensure_schema(connection, service.schema)
    for name in multidb_names(service_sources(service)):
        ensure_schema(connection, name)
    runs = [_run_command(connection, settings, service, item, downgrade=False) for item in targets]
    if targets in HEAD_TARGETS:
        _verify_at_head(service, runs[-1], targets[0])
    after = _heads_of(runs[-1], "after")
    return ServiceResult(
        service=service.name,
        schema=service.schema,
        before=join_heads(_heads_of(runs[0], "before")),
        after=join_heads(after),
        seconds=perf_counter() - started,
        target=targets,
        standing=_standing_note(service, after, targets),
    )


def _standing_note(service: ServiceConfig, after: tuple[str, ...],
                   targets: tuple[str, ...]) -> str | None:
    """How the database stands against the target after upgrading to it, when it is
    anything but at it (a database migrated past the target stays there)."""
    try:
        found = standing(script_directory(service), after, targets)
    except Exception:
        return None  # a relative target (+1) or an unreadable history: nothing to compare
    return None if found.state == "at" else found.note()


def _verify_at_head(service: ServiceConfig, records: list[VersionRecord], target: str) -> None:
    """Make sure the env.py really ran the migrations, into the branch, up to head."""
    heads = tuple(sorted(script_directory(service).get_heads()))
    if not records:
        raise MigrationError(
            "its env.py never called context.run_migrations()",
            service=service.name,
            hint=f"{service_sources(service).env_py} must configure Alembic on "
            "config.attributes['connection'] or on a connection of its own to sqlalchemy.url",
        )
    behind = [r for r in records if r.after != heads]
    if behind:
        raise MigrationError(
            f"upgrade to {target} left {version_locations(behind)} at "
            f"{join_heads(behind[0].after) or 'base'} but {target} is {join_heads(heads) or 'base'}",
            service=service.name,
        )


def downgrade_service(connection: Connection, settings: Settings, service: ServiceConfig,
                      target: str = "base") -> ServiceResult:
    assert service.schema is not None
    started = perf_counter()
    records = _run_command(connection, settings, service, target, downgrade=True)
    return ServiceResult(service.name, service.schema, join_heads(_heads_of(records, "before")),
                         join_heads(_heads_of(records, "after")), perf_counter() - started)


def describe_result(result: ServiceResult, heads: tuple[str, ...] | None = None) -> str:
    """`auth-service: base -> 8b4e6d0a5c21 (0.12 s)` or `…: at head 8b4e…, nothing to do`."""
    if not result.changed:
        at_head = heads is not None and result.after is not None and \
            tuple(sorted(result.after.split(","))) == tuple(sorted(heads))
        where = "at head" if at_head else "at"
        note = f" ({result.standing})" if result.standing else ""
        return f"{result.service}: {where} {result.after or 'base'}, nothing to do{note}"
    note = f"; {result.standing}" if result.standing else ""
    return (
        f"{result.service}: {result.before or 'base'} -> {result.after or 'base'} "
        f"({result.seconds:.2f} s{note})"
    )
