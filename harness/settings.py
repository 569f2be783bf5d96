"""One frozen settings object, read from every place a user may put a value.

Precedence, highest first: explicit options (command line) > process environment >
`.env` in the project root > `[tool.cathouse_harness]` in `pyproject.toml` > defaults.
Each value remembers where it came from, so a bad one fails with one line that names
the key and its source.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from harness import env
from harness.errors import ConfigError
from harness.redact import Secret

DEFAULT_API_HOST = "https://console.neon.tech/api/v2"
MAX_TTL = timedelta(days=30)
TOOL_TABLE = "tool.cathouse_harness"
# what every "nothing configured" message points at
INIT_HINT = f"`cathouse-branch init` proposes [{TOOL_TABLE}] from the project's alembic.ini files"

Backend = Literal["neon", "embedded"]
KeepPolicy = Literal["never", "on-failure", "always"]

# setting name -> environment variable that can set it
ENV_NAMES: dict[str, str] = {
    "api_key": "NEON_API_KEY",
    "api_host": "NEON_API_HOST",
    "project_id": "NEON_PROJECT_ID",
    "parent_branch": "CATHOUSE_PARENT_BRANCH",
    "database": "CATHOUSE_DATABASE",
    "role": "CATHOUSE_ROLE",
    "branch_ttl": "CATHOUSE_BRANCH_TTL",
    "schema_only": "CATHOUSE_SCHEMA_ONLY",
    "connection_limit": "CATHOUSE_CONNECTION_LIMIT",
    "backend": "CATHOUSE_BACKEND",
    "home": "CATHOUSE_HARNESS_HOME",
    "template_reuse": "CATHOUSE_TEMPLATE_REUSE",
    "keep_branch": "CATHOUSE_KEEP_BRANCH",
    "local_storage": "CATHOUSE_LOCAL_STORAGE",
}

_TOML_KEYS = {
    "project_id",
    "parent_branch",
    "database",
    "role",
    "branch_ttl",
    "schema_only",
    "connection_limit",
    "services",
    "api_host",
    "template_reuse",
    "keep_branch",
    "migration_sources",
    "local_storage",
}
_SERVICE_KEYS = {"name", "schema", "alembic_ini", "pool_size", "max_overflow", "read_only"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class ServiceConfig:
    """One service of the backend: its schema, its Alembic tree and its pool budget."""

    name: str
    schema: str | None = None
    alembic_ini: Path | None = None
    pool_size: int = 2
    max_overflow: int = 1
    read_only: bool = False

    @property
    def max_connections(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def migrates(self) -> bool:
        return self.alembic_ini is not None and not self.read_only


@dataclass(frozen=True)
class Settings:
    project_root: Path
    api_key: Secret | None = None
    api_host: str = DEFAULT_API_HOST
    project_id: str | None = None
    parent_branch: str = "main"
    database: str = "cathouse"
    role: str = "cathouse_owner"
    branch_ttl: timedelta = timedelta(minutes=15)
    schema_only: bool = False
    connection_limit: int = 10
    services: tuple[ServiceConfig, ...] = ()
    backend: Backend = "embedded"
    home: Path = field(default_factory=lambda: default_home())
    template_reuse: bool = True
    keep_branch: KeepPolicy | None = None
    # files outside the services' alembic trees that migrations load (shared env code)
    migration_sources: tuple[Path, ...] = ()
    # where the embedded default keeps its PostgreSQL: "memory" (fast, gone at reboot) or
    # "disk" (durable); each storage is its own local server and project
    local_storage: Literal["memory", "disk"] = "memory"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return (
            f"Settings(backend={self.backend!r}, project_id={self.project_id!r}, "
            f"parent_branch={self.parent_branch!r}, database={self.database!r}, "
            f"role={self.role!r}, api_host={self.api_host!r}, api_key={key}, "
            f"services={[s.name for s in self.services]!r})"
        )

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")

    def service(self, name: str) -> ServiceConfig:
        for service in self.services:
            if service.name == name:
                return service
        if not self.services:
            raise ConfigError(
                f"unknown service {name!r}: no services configured in {self.project_root / 'pyproject.toml'}",
                key="services",
                source=self.source_of("services"),
                hint=INIT_HINT,
            )
        known = ", ".join(s.name for s in self.services)
        raise ConfigError(
            f"unknown service {name!r} (known: {known})",
            key="services",
            source=self.source_of("services"),
            hint=f"add [[{TOOL_TABLE}.services]] with name = {name!r}",
        )

    @property
    def migrating_services(self) -> tuple[ServiceConfig, ...]:
        return tuple(s for s in self.services if s.migrates)

    @property
    def pool_budget(self) -> int:
        return sum(s.max_connections for s in self.services)


def default_home() -> Path:
    """Per-user cache directory for the embedded default's state and data."""
    xdg = env.read("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cathouse-harness"


def find_project_root(start: Path) -> Path:
    """The nearest directory at or above `start` whose pyproject.toml configures the
    harness; failing that, the nearest with any pyproject.toml; failing that, `start`."""
    start = start.resolve()
    first_pyproject: Path | None = None
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            first_pyproject = first_pyproject or directory
            try:
                text = candidate.read_text(encoding="utf-8")
            except OSError:
                continue
            if "[tool.cathouse_harness" in text:
                return directory
    return first_pyproject or start


def parse_ttl(value: Any, *, key: str = "branch_ttl", source: str = "default") -> timedelta:
    """'15m', '2h', '1d', '90s' or a number of seconds; positive and at most 30 days."""
    if isinstance(value, timedelta):
        ttl = value
    elif isinstance(value, bool):
        raise ConfigError("must be a duration like '15m'", key=key, source=source)
    elif isinstance(value, int | float):
        ttl = timedelta(seconds=value)
    else:
        match = _TTL.match(str(value))
        if not match:
            raise ConfigError(
                f"{value!r} is not a duration",
                key=key,
                source=source,
                hint="use a number with s, m, h or d, e.g. '15m'",
            )
        ttl = timedelta(seconds=int(match[1]) * _TTL_UNITS[match[2]])
    if ttl <= timedelta(0):
        raise ConfigError("must be longer than zero", key=key, source=source)
    if ttl > MAX_TTL:
        raise ConfigError(
            "must be at most 30 days (Neon refuses expires_at further ahead)",
            key=key,
            source=source,
        )
    return ttl


def _parse_bool(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{value!r} is not true or false", key=key, source=source)


def _parse_int(value: Any, key: str, source: str, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a whole number", key=key, source=source)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number", key=key, source=source) from None
    if number < minimum:
        raise ConfigError(f"must be at least {minimum}, got {number}", key=key, source=source)
    return number


def _read_pyproject(root: Path) -> tuple[dict[str, Any], str]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}, str(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"is not valid TOML ({exc})", key=str(path), hint="fix the syntax error"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", key=str(path)) from None
    table = data.get("tool", {}).get("cathouse_harness", {})
    if not isinstance(table, dict):
        raise ConfigError("must be a table", key=f"[{TOOL_TABLE}]", source=str(path))
    unknown = sorted(set(table) - _TOML_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}",
            key=f"[{TOOL_TABLE}]",
            source=str(path),
            hint=f"known keys: {', '.join(sorted(_TOML_KEYS))}",
        )
    return table, f"{path} [{TOOL_TABLE}]"


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        from dotenv import dotenv_values

        with path.open(encoding="utf-8") as handle:
            values = dotenv_values(stream=handle)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"cannot be read ({reason})",
            key=str(path),
            hint="fix its permissions or remove it",
        ) from None
    return {k: v for k, v in values.items() if v is not None}


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
        read_only = _parse_bool(entry.get("read_only", False), f"{where}.read_only", source)
        schema = entry.get("schema")
        if schema is not None:
            if not isinstance(schema, str) or not _IDENT.match(schema):
                raise ConfigError(
                    f"schema {schema!r} is not a plain SQL identifier",
                    key=f"{where}.schema",
                    source=source,
                )
            if schema in seen_schemas:
                raise ConfigError(
                    f"schema {schema!r} is already owned by {seen_schemas[schema]}",
                    key=f"{where}.schema",
                    source=source,
                    hint="each service owns its own schema",
                )
            seen_schemas[schema] = name
        alembic_ini: Path | None = None
        if entry.get("alembic_ini") is not None:
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
                    "a service with migrations needs a schema",
                    key=f"{where}.schema",
                    source=source,
                )
        pool_size = _parse_int(entry.get("pool_size", 2), f"{where}.pool_size", source, minimum=1)
        max_overflow = _parse_int(
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
            )
        )
    return tuple(services)


def _parse_sources(raw: Any, root: Path, source: str) -> tuple[Path, ...]:
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


def load_settings(
    start: Path | str | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    use_dotenv: bool = True,
) -> Settings:
    """Read settings for the project at or above `start` (default: the working directory)."""
    root = find_project_root(Path(start) if start else Path.cwd())
    environ = os.environ if environ is None else environ
    options = {k: v for k, v in (options or {}).items() if v is not None}
    table, toml_source = _read_pyproject(root)
    dotenv_path = root / ".env"
    dotenv = _read_dotenv(dotenv_path) if use_dotenv else {}

    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in _TOML_KEYS | set(ENV_NAMES):
        env_name = ENV_NAMES.get(key)
        if key in options:
            raw[key], sources[key] = options[key], "command line"
        elif env_name and environ.get(env_name) not in (None, ""):
            raw[key], sources[key] = environ[env_name], f"environment {env_name}"
        elif env_name and dotenv.get(env_name) not in (None, ""):
            raw[key], sources[key] = dotenv[env_name], f"{dotenv_path} {env_name}"
        elif key in table:
            raw[key], sources[key] = table[key], toml_source

    def src(key: str) -> str:
        return sources.get(key, "default")

    values: dict[str, Any] = {"project_root": root, "sources": sources}
    if "api_key" in raw:
        api_key = str(raw["api_key"]).strip()
        if not api_key or any(c.isspace() for c in api_key):
            raise ConfigError("is empty or contains spaces", key="NEON_API_KEY", source=src("api_key"))
        values["api_key"] = Secret(api_key)
    if "api_host" in raw:
        host = str(raw["api_host"]).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", host):
            raise ConfigError(
                f"{host!r} is not an http(s) URL",
                key="NEON_API_HOST",
                source=src("api_host"),
                hint="e.g. https://console.neon.tech/api/v2",
            )
        values["api_host"] = host
    for key in ("project_id", "parent_branch", "database", "role"):
        if key in raw:
            text = str(raw[key]).strip()
            if not text:
                raise ConfigError("must not be empty", key=key, source=src(key))
            values[key] = text
    if "branch_ttl" in raw:
        values["branch_ttl"] = parse_ttl(raw["branch_ttl"], source=src("branch_ttl"))
    for key in ("schema_only", "template_reuse"):
        if key in raw:
            values[key] = _parse_bool(raw[key], key, src(key))
    if "connection_limit" in raw:
        values["connection_limit"] = _parse_int(
            raw["connection_limit"], "connection_limit", src("connection_limit"), minimum=1
        )
    if "home" in raw:
        values["home"] = Path(str(raw["home"])).expanduser()
    if "keep_branch" in raw:
        keep = str(raw["keep_branch"]).strip().lower()
        if keep not in ("never", "on-failure", "always"):
            raise ConfigError(
                f"{raw['keep_branch']!r} is not one of never, on-failure, always",
                key="keep_branch",
                source=src("keep_branch"),
            )
        values["keep_branch"] = keep
    if "services" in raw:
        values["services"] = parse_services(raw["services"], root, src("services"))
    if "local_storage" in raw:
        storage = str(raw["local_storage"]).strip().lower()
        if storage not in ("memory", "disk"):
            raise ConfigError(
                f"{raw['local_storage']!r} is not 'memory' or 'disk'",
                key="local_storage",
                source=src("local_storage"),
            )
        values["local_storage"] = storage
    if "migration_sources" in raw:
        values["migration_sources"] = _parse_sources(
            raw["migration_sources"], root, src("migration_sources")
        )

    backend = str(raw.get("backend", "")).strip().lower()
    if backend not in ("", "neon", "embedded"):
        raise ConfigError(
            f"{raw['backend']!r} is not 'neon' or 'embedded'", key="backend", source=src("backend")
        )
    if not backend:
        backend = "neon" if values.get("api_key") else "embedded"
    if backend == "neon":
        if not values.get("api_key"):
            raise ConfigError(
                "the neon backend needs an API key",
                key="NEON_API_KEY",
                source="environment",
                hint="export NEON_API_KEY, or use the embedded default",
            )
        if not values.get("project_id"):
            raise ConfigError(
                "the neon backend needs a project id",
                key="NEON_PROJECT_ID",
                source="environment",
                hint=f"export NEON_PROJECT_ID or set project_id in [{TOOL_TABLE}]",
            )
    values["backend"] = backend

    settings = Settings(**values)
    check_pool_budget(settings.services, settings.connection_limit, src("services"))
    return settings
