"""The fingerprint of a project's migrations: which template branch a session may reuse.

It covers, in configured order, every migrating service's name and schema and the bytes
of its alembic.ini, env.py, script template and every file under its version
directories, plus the files `migration_sources` names (code that env.py loads from
outside the service's tree). Anything that could change the migrated schema changes it; so does the
order of the services. Files are read, never imported, so computing it is cheap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError, coerce_resource_to_filename

from harness.errors import ConfigError
from harness.settings import ServiceConfig, Settings

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


def service_sources(service: ServiceConfig) -> ServiceSources:
    if service.alembic_ini is None:
        raise ConfigError("has no alembic_ini", key=f"services[{service.name}]")
    try:
        config = Config(str(service.alembic_ini))
        location = config.get_alembic_option("script_location")
        if location is None:
            raise CommandError("no script_location")
        script_dir = Path(coerce_resource_to_filename(location)).resolve()
        configured = config.get_version_locations_list()
    except (CommandError, OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"cannot read its Alembic configuration ({exc})",
            key=f"services[{service.name}].alembic_ini",
            source=str(service.alembic_ini),
        ) from None
    if configured:
        version_dirs = tuple(Path(coerce_resource_to_filename(v)).resolve() for v in configured)
    else:
        version_dirs = (script_dir / "versions",)
    return ServiceSources(service.alembic_ini, script_dir, version_dirs)


def script_directory(service: ServiceConfig) -> ScriptDirectory:
    """Alembic's view of the service's revisions (parsed lazily, on first use)."""
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
