"""Where a home's instances live, and the settings a small instance runs with.

A home's instances share one base directory, 0700 and owned by the home's OS user
(`users`): under the home itself when that user can enter it (a developer running as
themself), else in our verified per-user directory of /dev/shm (memory) or /var/tmp
(disk). Each instance is `<base>/instances/<name>/` with its data directory, its socket
directory and its log. The secrets the control plane keeps (the superuser's password)
stay in the home, which PostgreSQL's user never reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import locations
from cathouse_harness.local.pg_binaries import OsUser, can_reach, chown_to, resolve_os_user
from cathouse_harness.local.pg_layout import Storage
from cathouse_harness.support.safe_paths import ensure_dir, private_home

# every instance listens on the same port number: the socket's directory tells them apart
SOCKET_PORT = 5432
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
_SOCKET_NAME = f".s.PGSQL.{SOCKET_PORT}"
# socket directories of instances whose own (`<name>/run`) makes too long a socket path
_SHORT_SOCKETS = "sockets"


@dataclass(frozen=True)
class ComputeHome:
    """The instances of one harness home."""

    home: Path
    base: Path
    state: Path
    user: OsUser
    storage: Storage

    def instance_dir(self, name: str) -> Path:
        return self.base / "instances" / name

    def template_dir(self, key: str) -> Path:
        return self.base / "templates" / key


@dataclass(frozen=True)
class InstancePaths:
    root: Path
    data: Path
    socket_dir: Path
    log_file: Path

    @classmethod
    def under(cls, root: Path) -> InstancePaths:
        return cls(root=root, data=root / "data", socket_dir=root / "run", log_file=root / "postgresql.log")


def _base_for(home: Path, user: OsUser, storage: Storage) -> Path:
    tag = locations.short_hash(str(home))
    if storage == "memory":
        memory = locations.memory_base(switch=user.switch)
        if memory is not None:
            return memory / f"{tag}-compute"
    if not user.switch and can_reach(home, user):
        return home / "compute" / ("pg" if storage == "disk" else "pg-memory")
    return locations.per_user_dir(locations.VAR_TMP_DIR, switch=user.switch) / f"{tag}-compute"


def templates_dir(home: Path, storage: Storage) -> Path:
    """Where `home`'s templates are, nothing made or checked (a client's preflight, before
    any server made the home's OS user: as root only that one runs them matters here)."""
    home = home.expanduser().resolve()
    user = OsUser("", 0, 0, switch=True) if os.geteuid() == 0 else resolve_os_user()
    return _base_for(home, user, storage) / "templates"


def owned_dir(path: Path, user: OsUser) -> Path:
    """A directory of the instances' user, 0700, made or verified (its parent is ours)."""
    ensure_dir(path, mode=0o700, owners={os.geteuid(), user.uid})
    chown_to(path, user, 0o700)
    return path


def open_home(home: Path, user: OsUser, storage: Storage = "memory") -> ComputeHome:
    """The home's compute directories, made or verified."""
    home = private_home(home.expanduser().resolve())
    state = ensure_dir(home / "compute", mode=0o700)
    base = _base_for(home, user, storage)
    if base.parent == home / "compute":
        ensure_dir(base.parent, mode=0o700)
    owned_dir(base, user)
    for sub in ("instances", "templates", _SHORT_SOCKETS):
        owned_dir(base / sub, user)
    return ComputeHome(home=home, base=base, state=state, user=user, storage=storage)


def instance_paths(compute: ComputeHome, name: str) -> InstancePaths:
    """The paths of instance `name`; its socket's full path must fit a socket address."""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or len(name) > 40:
        raise LocalServerError(f"bad instance name {name!r}", hint="letters, digits, '-' and '_', at most 40")
    paths = InstancePaths.under(compute.instance_dir(name))
    if len(str(paths.socket_dir / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        # a long branch id: the sockets go to a short directory of the instance's own
        paths = replace(paths, socket_dir=compute.base / _SHORT_SOCKETS / locations.short_hash(name))
    if len(str(paths.socket_dir / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        raise LocalServerError(
            f"the socket path under {compute.base} is too long for a unix socket",
            hint="use a shorter CATHOUSE_HARNESS_HOME or memory storage",
        )
    return paths


def socket_file(paths: InstancePaths) -> Path:
    return paths.socket_dir / _SOCKET_NAME


def memory_bases(home: Path) -> list[Path]:
    """The existing directories where an in-memory home's instances may be (for tests
    and cleaners; nothing is checked or made)."""
    home = home.expanduser().resolve()
    tag = locations.short_hash(str(home))
    places = {place.parent / f"{tag}-compute" for place in locations.memory_candidates(home)}
    places.add(home / "compute" / "pg-memory")
    return sorted(place for place in places if place.is_dir() and not place.is_symlink())
