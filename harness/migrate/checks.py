"""Migration checks a project runs in its own suite.

Each is a plain function that raises MigrationError with a message saying what to fix
and otherwise returns what it verified. The ones that take a URL change that database:
give them an empty, throwaway one (a test branch, a fresh database).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from functools import partial
from typing import Any

from alembic import command
from cathouse_harness.config.settings import ServiceConfig, Settings
from cathouse_harness.errors import MigrationError
from cathouse_harness.migrate.connection import run_with_connection
from cathouse_harness.migrate.environment import script_directory
from cathouse_harness.migrate.runner import (
    VERSION_TABLE,
    current_heads,
    downgrade_service,
    end_transaction,
    ensure_schema,
    run_alembic,
    upgrade_service,
)
from sqlalchemy import text
from sqlalchemy.engine import Connection

_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"

# Every object that a migration can create, as (kind, schema, name) rows.
_OBJECTS_SQL = f"""
SELECT 'schema', n.nspname, n.nspname
  FROM pg_namespace n
 WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                      WHEN 'i' THEN 'index' WHEN 'I' THEN 'index'
                      WHEN 'f' THEN 'foreign table' ELSE 'type' END,
       n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'column', n.nspname, c.relname || '.' || a.attname
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'constraint', n.nspname, c.relname || '.' || k.conname
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'trigger', n.nspname, c.relname || '.' || t.tgname
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal
   AND n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'type', n.nspname, t.typname
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typtype IN ('e', 'd', 'r', 'm') AND t.typelem = 0
   AND n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'function', n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
"""

# The shape of the objects inside the given schemas, detailed enough to compare two
# migrations of the same history: columns with types, defaults and nullability,
# constraint and index definitions, sequences, enum labels.
_SHAPE_SQL = """
SELECT 'relation', n.nspname || '.' || c.relname, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(:schemas) AND c.relkind <> 'i'
UNION ALL
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname = ANY(:schemas)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname,
       pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(:schemas)
UNION ALL
SELECT 'index', n.nspname || '.' || c.relname, pg_get_indexdef(c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('i', 'I')
UNION ALL
SELECT 'type', n.nspname || '.' || t.typname,
       coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                   FROM pg_enum e WHERE e.enumtypid = t.oid), t.typtype::text)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = ANY(:schemas) AND t.typtype IN ('e', 'd', 'r', 'm') AND t.typelem = 0
"""

_CROSS_SCHEMA_FKS_SQL = """
SELECT n.nspname, c.relname, k.conname, rn.nspname, rc.relname
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_class rc ON rc.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
 WHERE k.contype = 'f' AND n.nspname <> rn.nspname
 ORDER BY 1, 2, 3
"""

Object = tuple[str, str, str]


def _objects(connection: Connection) -> set[Object]:
    end_transaction(connection)
    try:
        return {tuple(row) for row in connection.execute(text(_OBJECTS_SQL))}  # type: ignore[misc]
    finally:
        end_transaction(connection)


def _shape(connection: Connection, schemas: list[str]) -> set[Object]:
    end_transaction(connection)
    try:
        rows = connection.execute(text(_SHAPE_SQL), {"schemas": schemas})
        return {tuple(row) for row in rows}  # type: ignore[misc]
    finally:
        end_transaction(connection)


def _name(obj: Object) -> str:
    kind, schema, name = obj
    return f"{kind} {name}" if kind == "schema" else f"{kind} {schema}.{name}"


_KIND_ORDER = ("schema", "table", "view", "materialized view", "foreign table", "sequence",
               "type", "function", "column", "constraint", "trigger", "index")


def _listing(objects: Iterable[Object], limit: int = 5) -> str:
    """The most telling objects first; a new table's own columns and constraints go
    without saying."""
    objects = set(objects)
    tables = {(o[1], o[2]) for o in objects if o[0] in ("table", "view", "materialized view")}
    shown = [
        o for o in objects
        if not (o[0] in ("column", "constraint", "trigger")
                and (o[1], o[2].split(".", 1)[0]) in tables)
    ]
    rank = {kind: i for i, kind in enumerate(_KIND_ORDER)}
    shown.sort(key=lambda o: (rank.get(o[0], len(rank)), o[1], o[2]))
    names = [_name(o) for o in shown]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _require_unmigrated(connection: Connection, settings: Settings, check: str) -> None:
    for service in settings.migrating_services:
        heads = current_heads(connection, service)
        if heads:
            raise MigrationError(
                f"{check} needs a database where no service has migrated yet, "
                f"but {service.name} is at {','.join(heads)}",
                service=service.name,
                hint="run it on a fresh database or branch",
            )


def check_single_head(settings: Settings) -> dict[str, str]:
    """Every migrating service has exactly one head, or, for a service whose `target`
    names several on purpose (`heads`, or branch labels), each target exactly one.
    Returns service -> head(s), comma-separated."""
    found: dict[str, str] = {}
    for service in settings.migrating_services:
        script = script_directory(service)
        heads = sorted(script.get_heads())
        if not heads:
            raise MigrationError("has no revisions", service=service.name)
        if service.target and service.target != ("head",):
            found[service.name] = ",".join(_one_head_per_target(script, service.name, service.target))
            continue
        if len(heads) > 1:
            raise MigrationError(
                f"has {len(heads)} heads ({', '.join(heads)})",
                service=service.name,
                hint=f"merge them: cd {service.name} && alembic merge heads -m merge",
            )
        found[service.name] = heads[0]
    return found


def _one_head_per_target(script: Any, service: str, targets: tuple[str, ...]) -> list[str]:
    """`heads` is every head the history has; any other target (`label@head`, a
    revision) must name exactly one, else that branch of the history has diverged."""
    from alembic.script.revision import MultipleHeads

    if "heads" in targets:
        return sorted(script.get_heads())
    found = []
    for target in targets:
        try:
            revisions = [r.revision for r in script.get_revisions(target)]
        except MultipleHeads as exc:
            revisions = list(exc.heads)
        if len(revisions) != 1:
            raise MigrationError(
                f"target {target!r} names {len(revisions)} heads ({', '.join(revisions)})",
                service=service,
                hint=f"merge them: cd {service} && alembic merge {target} -m merge",
            )
        found.append(revisions[0])
    return found


def check_round_trip(settings: Settings, direct_url: str) -> dict[str, int]:
    """Upgrade to head, downgrade every service to base (reverse order), upgrade again.

    Fails when a downgrade leaves objects behind or the second upgrade builds a
    different schema than the first. Returns service -> number of schema facts compared.
    """
    services = settings.migrating_services

    def work(connection: Connection) -> dict[str, int]:
        for service in services:
            upgrade_service(connection, settings, service)
        first = {s.name: _shape(connection, [s.schema or ""]) for s in services}
        for service in reversed(services):
            downgrade_service(connection, settings, service, "base")
            left = sorted(
                f"{kind} {name}"
                for kind, name, _ in _shape(connection, [service.schema or ""])
                if not name.split(".")[1].startswith(VERSION_TABLE)
            )
            if left:
                more = f" and {len(left) - 5} more" if len(left) > 5 else ""
                raise MigrationError(
                    f"downgrade to base left {', '.join(left[:5])}{more} behind",
                    service=service.name,
                    hint="make every downgrade() undo its upgrade()",
                )
        for service in services:
            upgrade_service(connection, settings, service)
        counts: dict[str, int] = {}
        for service in services:
            second = _shape(connection, [service.schema or ""])
            before, after = first[service.name], second
            if before != after:
                changed = sorted({o[1] for o in before ^ after})
                raise MigrationError(
                    "upgrade after a downgrade built a different schema: "
                    + ", ".join(changed[:5]) + (" …" if len(changed) > 5 else ""),
                    service=service.name,
                    hint="a downgrade() does not exactly undo its upgrade()",
                )
            counts[service.name] = len(after)
        return counts

    return run_with_connection(direct_url, work)


def _attribute_revision(connection: Connection, settings: Settings,
                        service: ServiceConfig) -> str | None:
    """Replay `service` one revision at a time to find the one that leaves its schema."""
    schema = service.schema or ""
    with suppress(Exception):
        downgrade_service(connection, settings, service, "base")
        script = script_directory(service)
        for revision in reversed(list(script.walk_revisions())):
            before = _objects(connection)
            run_alembic(connection, service, partial(command.upgrade, revision=revision.revision))
            end_transaction(connection)
            if any(o[1] != schema for o in _objects(connection) - before):
                return revision.revision
    return None


def check_schema_isolation(settings: Settings, direct_url: str) -> dict[str, int]:
    """Migrate the services one at a time on an empty database; each may create and
    change objects only inside its own schema. Returns service -> objects it created."""

    def work(connection: Connection) -> dict[str, int]:
        _require_unmigrated(connection, settings, "check_schema_isolation")
        created: dict[str, int] = {}
        for service in settings.migrating_services:
            schema = service.schema or ""
            ensure_schema(connection, schema)
            before = _objects(connection)
            upgrade_service(connection, settings, service)
            new = _objects(connection) - before
            outside = {o for o in new if o[1] != schema}
            if outside:
                revision = _attribute_revision(connection, settings, service)
                raise MigrationError(
                    f"created {_listing(outside)} outside its schema {schema}",
                    service=service.name,
                    revision=revision,
                    hint=f'pass schema="{schema}" to every op and name no other schema',
                )
            created[service.name] = len(new)
        return created

    return run_with_connection(direct_url, work)


def check_order(settings: Settings, direct_url: str) -> dict[str, tuple[str, ...]]:
    """On an empty database, migrating in configured order resolves every cross-schema
    foreign key, and each points at a service configured earlier.

    Returns service -> the services it depends on.
    """
    owners = {s.schema: s for s in settings.services if s.schema}
    position = {s.name: i for i, s in enumerate(settings.services)}

    def work(connection: Connection) -> dict[str, tuple[str, ...]]:
        _require_unmigrated(connection, settings, "check_order")
        for service in settings.migrating_services:
            upgrade_service(connection, settings, service)
        depends: dict[str, set[str]] = {s.name: set() for s in settings.migrating_services}
        end_transaction(connection)
        rows = connection.execute(text(_CROSS_SCHEMA_FKS_SQL)).all()
        end_transaction(connection)
        for schema, table, constraint, ref_schema, ref_table in rows:
            owner, target = owners.get(schema), owners.get(ref_schema)
            if owner is None or target is None or owner.name not in depends:
                continue
            if position[target.name] > position[owner.name]:
                raise MigrationError(
                    f"foreign key {schema}.{table}.{constraint} needs {ref_schema}.{ref_table}, "
                    f"which {target.name} creates; put {target.name} before {owner.name}",
                    service=owner.name,
                )
            depends[owner.name].add(target.name)
        return {name: tuple(sorted(d, key=position.__getitem__)) for name, d in depends.items()}

    return run_with_connection(direct_url, work)
