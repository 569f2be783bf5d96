"""The fingerprint of a project's migrations: which template branch a session may reuse.

It covers, in configured order, every migrating service's name and schema and the bytes
of its alembic.ini, env.py, script template and every file under its version
directories, plus the files `migration_sources` names (code that env.py loads from
outside the service's tree). Anything that could change the migrated schema changes it; so does the
order of the services. The `seed` counts too (each SQL file's bytes, each callable's
name and its module's source), so a template carries the data it was built with; with no
seed nothing is added, and templates built before the setting existed stay valid. Files
are read, never imported, so computing it is cheap.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cathouse_harness.config.seed import missing_module, module_file
from cathouse_harness.config.settings import ServiceConfig, Settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.migrate.run_memo import remembered

FINGERPRINT_LENGTH = 16
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class ServiceSources:
    """Where one service's Alembic configuration and migration sources live.

    `ini` is None for a project configured by pyproject.toml alone; `toml` is the
    pyproject.toml whose `[tool.alembic]` table Alembic reads (as the `alembic` command
    does when run from the service's directory), `toml_table` that table's content.
    """

    ini: Path | None
    toml: Path | None
    toml_table: str
    script_dir: Path
    version_dirs: tuple[Path, ...]
    workdir: Path | None = None  # the service's configured `directory`

    @property
    def directory(self) -> Path:
        """Where a user runs `alembic` for this service: relative paths start here."""
        return self.workdir or (self.ini or self.toml or self.script_dir).parent

    @property
    def env_py(self) -> Path:
        return self.script_dir / "env.py"

    def files(self) -> list[tuple[str, Path]]:
        """(label, path) of every source file, in a stable order."""
        found: list[tuple[str, Path]] = [("alembic.ini", self.ini)] if self.ini else []
        for name in ("env.py", "script.py.mako"):
            path = self.script_dir / name
            if path.is_file():
                found.append((name, path))
        for index, directory in enumerate(self.version_dirs):
            if not directory.is_dir():
                continue
            for path in sorted(directory.rglob("*")):
                relative = path.relative_to(directory)
                if not path.is_file() or _SKIPPED_DIRS & set(relative.parts[:-1]):
                    continue
                if path.suffix in _SKIPPED_SUFFIXES:
                    continue
                found.append((f"versions[{index}]/{relative.as_posix()}", path))
        return found


# Alembic's own values for `path_separator` / `version_path_separator`.
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
# Without a separator Alembic splits version_locations on spaces and commas (legacy).
_LEGACY_SPLIT = re.compile(r", *|(?: +)")


class _AlembicIniError(Exception):
    pass


def _read_alembic_section(ini: Path | None) -> configparser.ConfigParser:
    # The same parser Alembic builds for `Config(ini)`: `%(here)s` is the ini's directory,
    # basic interpolation, the locale's encoding. Reading it here (instead of importing
    # Alembic, ~0.5 s with SQLAlchemy) keeps a session that reuses its template import-light.
    if ini is None:
        return configparser.ConfigParser()
    parser = configparser.ConfigParser({"here": ini.absolute().parent.as_posix()})
    parser.read([ini], encoding="locale")
    return parser


def _toml_table(toml: Path | None) -> dict[str, object]:
    """`[tool.alembic]` of `toml`, with `%(here)s` expanded as Alembic expands it."""
    if toml is None or not toml.is_file():
        return {}
    import tomllib

    with toml.open("rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("alembic", {})
    if not isinstance(table, dict):
        raise _AlembicIniError("[tool.alembic] is not a table")
    here = toml.absolute().parent.as_posix()

    def expand(value: object) -> object:
        if isinstance(value, str):
            return value.replace("%(here)s", here)
        if isinstance(value, list):
            return [expand(v) for v in value]
        return value

    return {key: expand(value) for key, value in table.items()}


def alembic_toml_for(config_file: Path) -> Path | None:
    """The pyproject.toml Alembic reads beside `config_file` (or `config_file` itself),
    when it has a `[tool.alembic]` table."""
    candidate = config_file if config_file.suffix == ".toml" else config_file.parent / "pyproject.toml"
    if not candidate.is_file():
        return None
    try:
        return candidate if _toml_table(candidate) else None
    except (OSError, ValueError, _AlembicIniError):
        return None


def _to_path(location: str, base: Path, prepend: list[str]) -> Path:
    # Like Alembic: a relative name with a colon is a package resource (`pkg:dir/sub`),
    # found where Python would find the package with the service's prepend_sys_path,
    # without importing it (the service's directory is not on sys.path here). A plain
    # relative path is taken from the service's directory, where its users run `alembic`.
    from cathouse_harness.migrate.scan import package_bases, resolve_location

    found = resolve_location(location, base, package_bases(base, None, prepend))
    if found is None:
        raise ValueError(f"{location!r} names no package directory that can be found")
    return found


def _version_locations(parser: configparser.ConfigParser, table: dict[str, object]) -> list[str] | None:
    value = parser.get("alembic", "version_locations", fallback=None)
    if not value:
        listed = table.get("version_locations")
        return [str(v) for v in listed] if isinstance(listed, list) and listed else None
    for name in ("path_separator", "version_path_separator"):
        separator = parser.get("alembic", name, fallback=None)
        if separator is not None:
            if separator not in _SEPARATORS:
                raise ValueError(f"{separator!r} is not a valid value for {name}")
            return [part.strip() for part in value.split(_SEPARATORS[separator]) if part]
    return _LEGACY_SPLIT.split(value)


def service_sources(service: ServiceConfig) -> ServiceSources:
    """Where `service`'s Alembic setup lives, read from its files (once per migration run,
    see `cathouse_harness.migrate.run_memo`)."""
    return remembered(("service_sources", service), lambda: _read_service_sources(service))


def _read_service_sources(service: ServiceConfig) -> ServiceSources:
    if service.alembic_ini is None:
        raise ConfigError("has no alembic_ini", key=f"services[{service.name}]")
    config_file = service.alembic_ini
    ini = None if config_file.suffix == ".toml" else config_file
    try:
        toml = alembic_toml_for(config_file)
        table = _toml_table(toml)
        parser = _read_alembic_section(ini)
        location = parser.get("alembic", "script_location", fallback=None) \
            or table.get("script_location")
        if not location:
            where = "its [alembic] section" + (f" nor [tool.alembic] of {toml}" if toml else "")
            raise _AlembicIniError(f"no script_location in {where}")
        # Relative paths are taken from where the service's Alembic runs (Alembic takes
        # them from the working directory): its configured directory, else the ini's.
        base = service.directory or config_file.parent
        prepend = (parser.get("alembic", "prepend_sys_path", fallback=None)
                   or str(table.get("prepend_sys_path") or "")).split()
        script_dir = _to_path(str(location), base, prepend)
        configured = _version_locations(parser, table)
        version_dirs = (
            tuple(_to_path(v, base, prepend) for v in configured)
            if configured else (script_dir / "versions",)
        )
    except (_AlembicIniError, configparser.Error, OSError, ValueError, KeyError, ImportError) as exc:
        raise ConfigError(
            f"cannot read its Alembic configuration ({exc})",
            key=f"services[{service.name}].alembic_ini",
            source=str(service.alembic_ini),
        ) from None
    toml_text = repr(sorted(table.items())) if table else ""
    return ServiceSources(ini, toml, toml_text, script_dir, version_dirs, service.directory)


def migration_fingerprint(settings: Settings) -> str:
    """Short sha256 (16 hex chars) over every migrating service's sources, in order."""
    digest = hashlib.sha256(b"cathouse-harness migrations v1\0")

    def add(label: str, data: bytes) -> None:
        # length-prefixed, so no two different inputs can produce the same stream
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    for service in settings.migrating_services:
        add("service", service.name.encode())
        add("schema", (service.schema or "").encode())
        if service.target is not None:  # a subset of the heads is another schema
            add("target", "\0".join(service.target).encode())
        sources = service_sources(service)
        if sources.toml_table:
            add("tool.alembic", sources.toml_table.encode())
        for label, path in sources.files():
            add(label, path.read_bytes())
    for path in settings.migration_sources:
        add(f"extra/{_label(path, settings)}", path.read_bytes())
    for path in settings.seed.sql:
        add(f"seed/{_label(path, settings)}", path.read_bytes())
    for call in settings.seed.calls:
        found = module_file(call, settings.project_root)
        if found is None:
            raise missing_module(call, settings.source_of("seed"))
        add(f"seed/{call}", found.read_bytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def _label(path: Path, settings: Settings) -> str:
    """`path` as the fingerprint names it: from the project root, else its name alone."""
    if path.is_relative_to(settings.project_root):
        return path.relative_to(settings.project_root).as_posix()
    return path.name
