"""The services array of `[tool.cathouse_harness]` and the files migrations load.

One `ServiceConfig` per service (its schema, its Alembic tree, its pool budget), checked
entry by entry so that a bad one fails with the key and source that name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathouse_harness.config.app_env import AppEnv, parse_env
from cathouse_harness.config.values import parse_bool, parse_int
from cathouse_harness.errors import ConfigError

_SERVICE_KEYS = {
    "name", "schema", "alembic_ini", "pool_size", "max_overflow", "read_only", "target", "directory",
    "env",
}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ServiceConfig:
    """One service of the backend: its schema, its Alembic tree and its pool budget."""

    name: str
    schema: str | None = None
    alembic_ini: Path | None = None
    pool_size: int = 2
    max_overflow: int = 1
    read_only: bool = False
    # What `alembic upgrade` is given: None is the default (`head`, or what a history with
    # several heads needs, see `cathouse_harness.migrate.heads`); else one or more
    # revisions, branch labels or `heads`, upgraded to in order.
    target: tuple[str, ...] | None = None
    # Where the service's Alembic runs from (its users' `alembic -c …` directory); None:
    # the directory of its alembic.ini.
    directory: Path | None = None
    # the names its migrations set from the branch's direct URL: its own `env` table over
    # the top-level one (merged by `load_settings`)
    env: AppEnv = AppEnv()

    @property
    def max_connections(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def migrates(self) -> bool:
        return self.alembic_ini is not None and not self.read_only


def parse_services(raw: Any, root: Path, source: str) -> tuple[ServiceConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("must be an array of tables", key="services", source=source)
    services: list[ServiceConfig] = []
    seen_names: set[str] = set()
    seen_schemas: dict[str, str] = {}
    for index, entry in enumerate(raw):
        where = f"services[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", key=where, source=source)
        unknown = sorted(set(entry) - _SERVICE_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r}",
                key=where,
                source=source,
                hint=f"known keys: {', '.join(sorted(_SERVICE_KEYS))}",
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("needs a name", key=where, source=source)
        where = f"services[{name}]"
        if name in seen_names:
            raise ConfigError("is listed twice", key=where, source=source)
        seen_names.add(name)
        read_only = parse_bool(entry.get("read_only", False), f"{where}.read_only", source)
        schema = entry.get("schema")
        if schema is not None:
            _check_schema(schema, f"{where}.schema", source, seen_schemas)
            seen_schemas[schema] = name
        alembic_ini = _alembic_ini(entry, where, root, source, read_only=read_only, schema=schema)
        pool_size = parse_int(entry.get("pool_size", 2), f"{where}.pool_size", source, minimum=1)
        max_overflow = parse_int(
            entry.get("max_overflow", 1), f"{where}.max_overflow", source, minimum=0
        )
        services.append(
            ServiceConfig(
                name=name,
                schema=schema,
                alembic_ini=alembic_ini,
                pool_size=pool_size,
                max_overflow=max_overflow,
                read_only=read_only,
                target=_target(entry.get("target"), f"{where}.target", source),
                directory=_directory(entry.get("directory"), f"{where}.directory", root, source),
                env=parse_env(entry.get("env", {}), f"{where}.env", source),
            )
        )
    return tuple(services)


def _target(raw: Any, key: str, source: str) -> tuple[str, ...] | None:
    """`"heads"`, `"core@head"` or a list of such; None when the key is absent."""
    if raw is None:
        return None
    items = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(items, list)
        or not items
        or not all(isinstance(item, str) and item.strip() and item == item.strip() for item in items)
    ):
        raise ConfigError(
            f"{raw!r} is not a revision or a list of revisions",
            key=key,
            source=source,
            hint='use "head", "heads", a branch label such as "core@head", or a list of them',
        )
    return tuple(items)


def _directory(raw: Any, key: str, root: Path, source: str) -> Path | None:
    if raw is None:
        return None
    directory = (root / raw).resolve() if isinstance(raw, str) and raw.strip() else None
    if directory is None or not directory.is_dir():
        raise ConfigError(
            f"{raw!r} is not a directory (looked at {directory or root})",
            key=key,
            source=source,
            hint="the directory Alembic runs from, relative to the pyproject.toml",
        )
    return directory


def plain_identifier(text: str) -> bool:
    """What a service's schema must be: a SQL identifier that needs no quoting."""
    return bool(_IDENT.match(text))


def _check_schema(schema: Any, key: str, source: str, owners: dict[str, str]) -> None:
    """A plain SQL identifier no other service already claimed (`owners`: schema -> service)."""
    if not isinstance(schema, str) or not plain_identifier(schema):
        raise ConfigError(f"schema {schema!r} is not a plain SQL identifier", key=key, source=source)
    if schema in owners:
        raise ConfigError(
            f"schema {schema!r} is already owned by {owners[schema]}",
            key=key,
            source=source,
            hint="each service owns its own schema",
        )


def _alembic_ini(
    entry: dict[str, Any], where: str, root: Path, source: str, *, read_only: bool, schema: Any
) -> Path | None:
    """The service's alembic.ini resolved against `root`; None for a service without one."""
    if entry.get("alembic_ini") is None:
        return None
    if read_only:
        raise ConfigError(
            "a read_only service has no migrations",
            key=f"{where}.alembic_ini",
            source=source,
            hint="remove alembic_ini or read_only",
        )
    alembic_ini = (root / str(entry["alembic_ini"])).resolve()
    if not alembic_ini.is_file():
        raise ConfigError(
            f"{entry['alembic_ini']!r} does not exist (looked at {alembic_ini})",
            key=f"{where}.alembic_ini",
            source=source,
            hint="paths are relative to the pyproject.toml that configures them",
        )
    if schema is None:
        raise ConfigError(
            "a service with migrations needs a schema", key=f"{where}.schema", source=source
        )
    return alembic_ini


def parse_sources(raw: Any, root: Path, source: str) -> tuple[Path, ...]:
    """Glob patterns relative to the project root; each must match at least one file."""
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError("must be a list of glob patterns", key="migration_sources", source=source)
    found: set[Path] = set()
    for pattern in raw:
        matches = [
            p.resolve() for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts
        ]
        if not matches:
            raise ConfigError(
                f"{pattern!r} matches no file under {root}",
                key="migration_sources",
                source=source,
            )
        found.update(matches)
    return tuple(sorted(found))


def check_pool_budget(services: tuple[ServiceConfig, ...], limit: int, source: str) -> None:
    total = sum(s.max_connections for s in services)
    if total > limit:
        parts = " + ".join(f"{s.name} {s.max_connections}" for s in services)
        raise ConfigError(
            f"pools need {total} connections ({parts}) but connection_limit is {limit}",
            key="services",
            source=source,
            hint="lower pool_size or max_overflow, or raise connection_limit",
        )
