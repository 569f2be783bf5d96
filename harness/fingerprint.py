"""The fingerprint of a project's migrations: which template branch a session may reuse.

It covers, in configured order, every migrating service's name and schema and the bytes
of its alembic.ini, env.py, script template and every file under its version
directories, plus the files `migration_sources` names (code that env.py loads from
outside the service's tree). Anything that could change the migrated schema changes it; so does the
order of the services. Files are read, never imported, so computing it is cheap.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.settings import ServiceConfig, Settings

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

FINGERPRINT_LENGTH = 16
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class ServiceSources:
    """Where one service's migration sources live."""

    ini: Path
    script_dir: Path
    version_dirs: tuple[Path, ...]

    def files(self) -> list[tuple[str, Path]]:
        """(label, path) of every source file, in a stable order."""
        found: list[tuple[str, Path]] = [("alembic.ini", self.ini)]
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
# Resource names (`package:dir`) resolved to files stay valid until the process exits.
_RESOURCE_FILES = contextlib.ExitStack()


class _AlembicIniError(Exception):
    pass


def _read_alembic_section(ini: Path) -> configparser.ConfigParser:
    # The same parser Alembic builds for `Config(ini)`: `%(here)s` is the ini's directory,
    # basic interpolation, the locale's encoding. Reading it here (instead of importing
    # Alembic, ~0.5 s with SQLAlchemy) keeps a session that reuses its template import-light.
    parser = configparser.ConfigParser({"here": ini.absolute().parent.as_posix()})
    parser.read([ini], encoding="locale")
    return parser


def _to_path(location: str) -> Path:
    # Like Alembic: a relative name with a colon is a package resource (`pkg:dir/sub`).
    if not os.path.isabs(location) and ":" in location:
        from importlib import resources  # rare, and ~5 ms of imports

        package, *parts = location.split(":")
        ref = resources.files(package)
        for part in parts:
            ref = ref / part
        return Path(_RESOURCE_FILES.enter_context(resources.as_file(ref)))
    return Path(location)


def _version_locations(parser: configparser.ConfigParser) -> list[str] | None:
    value = parser.get("alembic", "version_locations", fallback=None)
    if not value:
        return None
    for name in ("path_separator", "version_path_separator"):
        separator = parser.get("alembic", name, fallback=None)
        if separator is not None:
            if separator not in _SEPARATORS:
                raise ValueError(f"{separator!r} is not a valid value for {name}")
            return [part.strip() for part in value.split(_SEPARATORS[separator]) if part]
    return _LEGACY_SPLIT.split(value)


def service_sources(service: ServiceConfig) -> ServiceSources:
    if service.alembic_ini is None:
        raise ConfigError("has no alembic_ini", key=f"services[{service.name}]")
    try:
        parser = _read_alembic_section(service.alembic_ini)
        location = parser.get("alembic", "script_location", fallback=None)
        if location is None:
            raise _AlembicIniError("no script_location")
        script_dir = _to_path(location).resolve()
        configured = _version_locations(parser)
    except (_AlembicIniError, configparser.Error, OSError, ValueError, KeyError, ImportError) as exc:
        raise ConfigError(
            f"cannot read its Alembic configuration ({exc})",
            key=f"services[{service.name}].alembic_ini",
            source=str(service.alembic_ini),
        ) from None
    if configured:
        version_dirs = tuple(_to_path(v).resolve() for v in configured)
    else:
        version_dirs = (script_dir / "versions",)
    return ServiceSources(service.alembic_ini, script_dir, version_dirs)


def script_directory(service: ServiceConfig) -> ScriptDirectory:
    """Alembic's view of the service's revisions (parsed lazily, on first use)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(Config(str(service.alembic_ini)))


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
        for label, path in service_sources(service).files():
            add(label, path.read_bytes())
    for path in settings.migration_sources:
        label = path.relative_to(settings.project_root).as_posix() if path.is_relative_to(
            settings.project_root
        ) else path.name
        add(f"extra/{label}", path.read_bytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
