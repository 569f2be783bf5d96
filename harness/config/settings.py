"""One frozen settings object, read from every place a user may put a value.

Precedence, highest first: explicit options (command line) > process environment >
`.env` in the project root > `[tool.cathouse_harness]` in `pyproject.toml` (or in the
file CATHOUSE_CONFIG names, which then stands in for it) > defaults.
Each value remembers where it came from, so a bad one fails with one line that names
the key and its source.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from cathouse_harness.config.app_env import DRIVERS, AppEnv, parse_env
from cathouse_harness.config.seed import Seed, parse_seed
from cathouse_harness.config.services import ServiceConfig, check_pool_budget, parse_services, parse_sources
from cathouse_harness.config.values import check_postgres_bin, parse_bool, parse_int, parse_ttl
from cathouse_harness.db.guard import AllowedTarget, parse_allowed
from cathouse_harness.errors import ConfigError
from cathouse_harness.support import env
from cathouse_harness.support.redact import Secret

DEFAULT_API_HOST = "https://console.neon.tech/api/v2"
TOOL_TABLE = "tool.cathouse_harness"
# what every "nothing configured" message points at
INIT_HINT = f"`cathouse-branch init` proposes [{TOOL_TABLE}] from the project's alembic.ini files"

Backend = Literal["neon", "embedded"]
KeepPolicy = Literal["never", "on-failure", "always"]
WorkerIsolation = Literal["database", "branch"]

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
    "spare": "CATHOUSE_SPARE",
    "diff_kept": "CATHOUSE_DIFF_KEPT",
    "keep_branch": "CATHOUSE_KEEP_BRANCH",
    "local_storage": "CATHOUSE_LOCAL_STORAGE",
    "worker_isolation": "CATHOUSE_WORKER_ISOLATION",
    "postgres_bin": "CATHOUSE_POSTGRES_BIN",
    "pooler_mode": "CATHOUSE_POOLER_MODE",
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
    "spare",
    "diff_kept",
    "keep_branch",
    "migration_sources",
    "local_storage",
    "worker_isolation",
    "allow_connections",
    "postgres_bin",
    "pooler_mode",
    "env",
    "url_driver",
    "seed",
}


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
    # keep one spare fork of the template ready for the next session on this machine
    # (`cathouse_harness.branching.spares`): a warm session then skips its fork
    spare: bool = True
    # print the schema diff of a branch kept for inspection against its parent (the
    # template) in the run's summary: what the failed tests changed, one API call each
    diff_kept: bool = False
    keep_branch: KeepPolicy | None = None
    # files outside the services' alembic trees that migrations load (shared env code)
    migration_sources: tuple[Path, ...] = ()
    # where the embedded default keeps its PostgreSQL: "memory" (fast, gone at reboot) or
    # "disk" (durable); each storage is its own local server and project
    local_storage: Literal["memory", "disk"] = "memory"
    # what an xdist worker gets of its own: a database on one branch the run's workers
    # share (one fork for the run), or a branch (a fork per worker)
    worker_isolation: WorkerIsolation = "database"
    # PostgreSQL servers other than the branch that tests may reach on purpose
    # (`cathouse_harness.db.guard` refuses every other one while a session holds a branch)
    allow_connections: tuple[AllowedTarget, ...] = ()
    # which PostgreSQL the embedded default runs (cathouse_harness.local.pg_choice): a bin
    # directory, "wheel" or "system"; None is auto (a system one when installed)
    postgres_bin: str | None = None
    # the pool mode of the embedded default's PgBouncer (cathouse_harness.local.data.pgbouncer):
    # None is Neon's transaction mode; "session" where an old PgBouncer cannot carry
    # prepared statements in transaction mode
    pooler_mode: Literal["transaction", "session"] | None = None
    # the project's own variable names, set to the branch in the test process (and, with
    # each service's own table, in its migrations): `cathouse_harness.config.app_env`
    env: AppEnv = AppEnv()
    # the driver form of DATABASE_URL / MIGRATION_DATABASE_URL; None: asyncpg's and plain
    url_driver: str | None = None
    # reference data a new template gets after its migrations (`cathouse_harness.config.seed`)
    seed: Seed = Seed()
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
    def migrates_or_seeds(self) -> bool:
        """Whether a new branch needs work before tests use it (a template to build)."""
        return bool(self.migrating_services or self.seed)

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


def read_harness_table(
    root: Path, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The harness's table and where it came from: from the file CATHOUSE_CONFIG names
    when it is set, so that a project we may not edit (or a developer's own setup) is
    configured from outside its tracked files; else from the project's pyproject.toml.
    The file replaces the project's table whole (no merging: one place says what a run
    uses), and the paths it holds stay relative to the project root. Whatever asks
    whether the project configures the harness (or maps its variables) reads through
    here, so both places agree."""
    named = env.read("CATHOUSE_CONFIG", environ)
    if named is None:
        return _read_pyproject(root)
    path = Path(named).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(
            f"{path} is not a file",
            key="CATHOUSE_CONFIG",
            source="environment",
            hint=f"name a TOML file holding a [{TOOL_TABLE}] table, or unset CATHOUSE_CONFIG",
        )
    return _read_pyproject(path.parent, path, required=True)


def _read_pyproject(
    root: Path, path: Path | None = None, *, required: bool = False
) -> tuple[dict[str, Any], str]:
    path = path or root / "pyproject.toml"
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
    if required and "cathouse_harness" not in data.get("tool", {}):
        raise ConfigError(
            f"has no [{TOOL_TABLE}] table",
            key=str(path),
            source="environment CATHOUSE_CONFIG",
            hint=f"write the settings under [{TOOL_TABLE}], as in a pyproject.toml",
        )
    table = data.get("tool", {}).get("cathouse_harness", {})
    _check_table(table, str(path))
    return table, f"{path} [{TOOL_TABLE}]"


def _check_table(table: Any, source: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError("must be a table", key=f"[{TOOL_TABLE}]", source=source)
    unknown = sorted(set(table) - _TOML_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}",
            key=f"[{TOOL_TABLE}]",
            source=source,
            hint=f"known keys: {', '.join(sorted(_TOML_KEYS))}",
        )


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


def load_settings(
    start: Path | str | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    use_dotenv: bool = True,
    table: tuple[dict[str, Any], str] | None = None,
) -> Settings:
    """Read settings for the project at or above `start` (default: the working directory).
    `table` (the table, its source) stands in for the pyproject.toml's: `start` is then the
    root (init checks what it proposes with this)."""
    if table is not None:
        _check_table(table[0], table[1])
    start_dir = Path(start) if start else Path.cwd()
    root = start_dir.resolve() if table else find_project_root(start_dir)
    raw = _RawValues.collect(
        root,
        options={k: v for k, v in (options or {}).items() if v is not None},
        environ=os.environ if environ is None else environ,
        use_dotenv=use_dotenv,
        given=table,
    )
    values: dict[str, Any] = {"project_root": root, "sources": raw.sources}
    values.update(_connection_values(raw))
    values.update(_run_values(raw, root))
    values["backend"] = _backend(raw, values)
    settings = Settings(**values)
    check_pool_budget(settings.services, settings.connection_limit, raw.src("services"))
    return settings


@dataclass(frozen=True)
class _RawValues:
    """Each setting's value as given, before checking, and where it came from."""

    values: dict[str, Any]
    sources: dict[str, str]

    @classmethod
    def collect(
        cls, root: Path, *, options: Mapping[str, Any], environ: Mapping[str, str], use_dotenv: bool,
        given: tuple[dict[str, Any], str] | None = None,
    ) -> _RawValues:
        """The first place that sets each key, in precedence order; `given` stands in for
        the pyproject.toml's table."""
        table, toml_source = given or read_harness_table(root, environ)
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
        return cls(raw, sources)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def src(self, key: str) -> str:
        return self.sources.get(key, "default")

    def choice(self, key: str, allowed: tuple[str, ...], wording: str) -> str:
        """The value lower-cased, one of `allowed`; `wording` lists them for the error."""
        text = str(self.values[key]).strip().lower()
        if text not in allowed:
            raise ConfigError(
                f"{self.values[key]!r} is not {wording}", key=key, source=self.src(key)
            )
        return text


def _connection_values(raw: _RawValues) -> dict[str, Any]:
    """Where the API and the database are: key, host, project, names."""
    values: dict[str, Any] = {}
    if "api_key" in raw:
        api_key = str(raw["api_key"]).strip()
        if not api_key or any(c.isspace() for c in api_key):
            raise ConfigError("is empty or contains spaces", key="NEON_API_KEY", source=raw.src("api_key"))
        values["api_key"] = Secret(api_key)
    if "api_host" in raw:
        host = str(raw["api_host"]).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", host):
            raise ConfigError(
                f"{host!r} is not an http(s) URL",
                key="NEON_API_HOST",
                source=raw.src("api_host"),
                hint="e.g. https://console.neon.tech/api/v2",
            )
        values["api_host"] = host
    for key in ("project_id", "parent_branch", "database", "role"):
        if key in raw:
            text = str(raw[key]).strip()
            if not text:
                raise ConfigError("must not be empty", key=key, source=raw.src(key))
            values[key] = text
    if "home" in raw:
        values["home"] = Path(str(raw["home"])).expanduser()
    return values


def _run_values(raw: _RawValues, root: Path) -> dict[str, Any]:
    """How runs behave: branch lifetime and keeping, services, templates, storage."""
    values: dict[str, Any] = {}
    if "branch_ttl" in raw:
        values["branch_ttl"] = parse_ttl(raw["branch_ttl"], source=raw.src("branch_ttl"))
    for key in ("schema_only", "template_reuse", "spare", "diff_kept"):
        if key in raw:
            values[key] = parse_bool(raw[key], key, raw.src(key))
    if "connection_limit" in raw:
        values["connection_limit"] = parse_int(
            raw["connection_limit"], "connection_limit", raw.src("connection_limit"), minimum=1
        )
    if "keep_branch" in raw:
        values["keep_branch"] = raw.choice(
            "keep_branch", ("never", "on-failure", "always"), "one of never, on-failure, always"
        )
    if "env" in raw:
        values["env"] = parse_env(raw["env"], "env", raw.src("env"))
    if "url_driver" in raw:
        values["url_driver"] = raw.choice("url_driver", DRIVERS, f"one of {', '.join(DRIVERS)}")
    if "services" in raw:
        services = parse_services(raw["services"], root, raw.src("services"))
        # a service's migrations see the top-level names too, its own table winning
        top = values.get("env", AppEnv())
        values["services"] = tuple(replace(s, env=top.merged(s.env)) for s in services)
    if "local_storage" in raw:
        values["local_storage"] = raw.choice("local_storage", ("memory", "disk"), "'memory' or 'disk'")
    if "worker_isolation" in raw:
        values["worker_isolation"] = raw.choice(
            "worker_isolation", ("database", "branch"), "'database' or 'branch'"
        )
    if "postgres_bin" in raw:
        values["postgres_bin"] = check_postgres_bin(
            str(raw["postgres_bin"]), source=raw.src("postgres_bin"), base=root
        )
    if "pooler_mode" in raw:
        values["pooler_mode"] = raw.choice(
            "pooler_mode", ("transaction", "session"), "'transaction' (Neon's) or 'session'"
        )
    if "migration_sources" in raw:
        values["migration_sources"] = parse_sources(
            raw["migration_sources"], root, raw.src("migration_sources")
        )
    if "seed" in raw:
        values["seed"] = parse_seed(raw["seed"], root, raw.src("seed"))
    if "allow_connections" in raw:
        values["allow_connections"] = _allowed_targets(raw["allow_connections"], raw.src("allow_connections"))
    return values


def _allowed_targets(value: Any, source: str) -> tuple[AllowedTarget, ...]:
    if not isinstance(value, list):
        raise ConfigError("must be a list of strings", key="allow_connections", source=source,
                          hint='e.g. allow_connections = ["localhost:5433/reporting"]')
    targets = []
    for entry in value:
        try:
            targets.append(parse_allowed(entry))
        except ValueError as exc:
            raise ConfigError(str(exc), key="allow_connections", source=source,
                              hint="each entry is a PostgreSQL URL or host[:port][/database]") from None
    return tuple(targets)


def _backend(raw: _RawValues, values: Mapping[str, Any]) -> str:
    """`backend` as given, else neon with an API key and embedded without; neon needs
    both the key and a project id."""
    backend = ""
    if "backend" in raw:
        backend = raw.choice("backend", ("", "neon", "embedded"), "'neon' or 'embedded'")
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
    return backend
